"""Small adapters over boto3 that implement `sip_trunk.workflows.ports`.

Clients are created on first use (never at import time) and cached per process, so a Lambda
container reuses its connections. `reset()` drops every cache (tests call it between moto contexts).
"""
