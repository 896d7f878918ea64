"""The domain behind each state-machine step and schedule.

Pure functions over small adapter interfaces (`sip_trunk.workflows.ports`): no environment reads, no
boto3 clients. The Lambda handlers in `functions/*/app.py` parse the event, build the adapters from
`sip_trunk.aws` and call one function here.
"""
