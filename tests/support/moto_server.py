"""A moto server on a free port, for code under test that talks HTTP to AWS (the host agent, certbot's plugin)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from moto.server import ThreadedMotoServer
from sip_trunk_local.sipp import free_port


@contextmanager
def moto_server(host: str = "127.0.0.1") -> Iterator[str]:
    """Yield the server's URL; the server is stopped however the block ends."""
    port = free_port(host)
    server = ThreadedMotoServer(ip_address=host, port=port, verbose=False)
    server.start()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()
