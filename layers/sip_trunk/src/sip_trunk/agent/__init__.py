"""The host agent `sip-trunk-agent`: runs on the Asterisk host, driven by SSM Run Command and systemd timers.

Standard library + boto3 only (the host image installs nothing else for it): it must not import pydantic,
jinja2, yaml, `sip_trunk.settings` or `sip_trunk.render`. Every subcommand prints one JSON object on stdout and
exits 0 on success, 1 when the operation failed (after undoing what it could), 2 on bad usage.
"""
