"""Lambda cost signals: what each function deploys (the shared layer built by ``make build`` plus the
function's own code) and how long the health-check and verify handlers run in-process against moto and a
loopback SIP responder (sip_trunk_local.harness.world), median of N invocations after one warm-up."""

from __future__ import annotations

import contextlib
import io
import json
import statistics
import time
import zipfile
from pathlib import Path
from typing import Any

from bench.common import REPO

BUILD = REPO / ".aws-sam" / "build"


def _zip_size(root: Path) -> tuple[int, int]:
    """(bytes on disk, bytes as a deflated zip) of a directory tree."""
    raw = 0
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(root.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                raw += path.stat().st_size
                zf.write(path, path.relative_to(root))
    return raw, buf.tell()


def package_sizes() -> dict[str, Any]:
    layer_dir = BUILD / "SipTrunkLayer"
    if not layer_dir.is_dir():
        return {"note": "no .aws-sam/build: run `make build` first", "layer": None, "functions": {}}
    layer_raw, layer_zip = _zip_size(layer_dir)
    functions: dict[str, Any] = {}
    for fn in sorted(REPO.glob("functions/*/app.py")):
        name = fn.parent.name
        raw, zipped = _zip_size(fn.parent)
        functions[name] = {
            "code_bytes": raw,
            "code_zip_bytes": zipped,
            "with_layer_unzipped_mib": round((raw + layer_raw) / 2**20, 2),
        }
    return {
        "layer": {"unzipped_mib": round(layer_raw / 2**20, 2), "zip_mib": round(layer_zip / 2**20, 2)},
        "functions": functions,
        "limit_unzipped_mib": 250,
    }


def handler_durations(n: int) -> dict[str, Any]:
    import pytest
    from moto import mock_aws
    from sip_trunk_local.harness.moto_sfn import FakeContext, load_handlers
    from sip_trunk_local.harness.world import build_world

    events = REPO / "tests" / "events"
    schedule = json.loads((events / "schedule_event.json").read_text())
    out: dict[str, Any] = {"invocations": n}
    quiet = contextlib.redirect_stdout(io.StringIO())  # the handlers print EMF metrics and JSON logs
    with quiet, pytest.MonkeyPatch.context() as mp, mock_aws(), build_world(mp) as world:
        from sip_trunk.observability import metrics

        metrics.namespace = world.env.get("POWERTOOLS_METRICS_NAMESPACE", "AwsSipTrunkBench")
        started = time.perf_counter()
        handlers = load_handlers()
        out["import_all_handlers_ms"] = round(1000 * (time.perf_counter() - started), 1)
        version = "v0123456789abcdef"
        ids = list(world.deploy_two_hosts(version))
        verify_event = {
            "execution": json.loads((events / "provision_task_validate.json").read_text())["execution"],
            "render": {
                "version": version,
                "previous_version": None,
                "public_address": world.address,
                "published": True,
                "files": 20,
            },
            "stack": {
                "ready": True,
                "status": "CREATE_COMPLETE",
                "primary_instance_id": ids[0],
                "standby_instance_id": ids[1],
                "address_associated": True,
            },
            "entered_at": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
        }
        calls = {
            "health_check": lambda: handlers["health_check"](schedule, FakeContext("health_check")),
            "verify_trunk": lambda: handlers["verify_trunk"](dict(verify_event), FakeContext("verify_trunk")),
        }
        for name, call in calls.items():
            try:
                call()  # warm-up (clients, caches)
                samples = []
                for _ in range(n):
                    t0 = time.perf_counter()
                    call()
                    samples.append(1000 * (time.perf_counter() - t0))
                out[name] = {
                    "median_ms": round(statistics.median(samples), 1),
                    "p90_ms": round(sorted(samples)[int(0.9 * (len(samples) - 1))], 1),
                    "min_ms": round(min(samples), 1),
                }
            except Exception as exc:  # a broken handler is a result, not a crash of the benchmark
                out[name] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
    out["note"] = (
        "in-process against moto on loopback: moto answers in microseconds-to-milliseconds where AWS takes "
        "tens of ms per call, so these are lower bounds of the billed duration; the SIP probe is real"
    )
    return out


def run(*, quick: bool, log: Any = print) -> dict[str, Any]:
    result = {"packages": package_sizes(), "handlers": handler_durations(5 if quick else 25)}
    log(f"  layer {result['packages'].get('layer')}")
    for name in ("health_check", "verify_trunk"):
        log(f"  {name}: {result['handlers'].get(name)}")
    return result
