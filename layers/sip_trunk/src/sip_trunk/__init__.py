"""aws-sip-trunk: the Asterisk gateway between phone networks and the ElevenLabs Agents SIP trunk."""

__version__ = "0.1.0"
