"""Helpers for the tests that drive a real Asterisk, sipp and network namespaces (root only).

`support.gateway`, `support.moto_sfn` and `support.world` are the modules of `sip_trunk_local.harness` (shared with
the benchmarks), registered here under the tests' names."""

import sys

from sip_trunk_local.harness import gateway, moto_sfn, world

for _module in (gateway, moto_sfn, world):
    sys.modules[f"{__name__}.{_module.__name__.rsplit('.', 1)[1]}"] = _module
