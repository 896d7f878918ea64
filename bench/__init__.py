"""Benchmarks of the gateway: capacity, reload under load and Lambda cost signals (``python -m bench.run``)."""
