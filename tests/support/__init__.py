"""Helpers for the tests that drive a real Asterisk, sipp and network namespaces (root only)."""
