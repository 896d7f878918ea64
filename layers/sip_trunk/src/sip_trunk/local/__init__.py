"""Local emulation of the pieces the gateway talks to, for tests and the offline demo."""
