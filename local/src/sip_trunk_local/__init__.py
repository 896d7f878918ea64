"""Local mode and the test harness of aws-sip-trunk (development and test only, never deployed): moto's control
plane, Asterisk hosts in network namespaces, the ElevenLabs and carrier stand-ins, drills, and `sip-trunk local`."""
