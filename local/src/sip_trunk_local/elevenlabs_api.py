"""An in-process stand-in for the ElevenLabs phone-number and SIP-trunk API, on 127.0.0.1.

Tests and the local demo need the client's real HTTP path (headers, status codes, retries) without ever
contacting ElevenLabs, and they need failures on demand (429 with Retry-After, 503, slow answers).
Response shapes follow the public API reference and the official SDK's models (tests hold them to it);
passwords are stored but never returned, like the real API.

A PATCH replaces a nested `inbound_trunk_config`/`outbound_trunk_config` as a whole: a field the body leaves
out is gone afterwards. ElevenLabs does not document whether it merges or replaces, so the stand-in emulates
the destructive answer, and a client that keeps what it does not own must send it back. The one documented
exception is kept: credentials with a null or missing password leave the stored password unchanged.
`edit` changes a stored number directly, as an operator would in the ElevenLabs dashboard.
"""

from __future__ import annotations

import json
import re
import secrets
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

__all__ = ["ElevenLabsStandIn", "OutboundCallRecord", "RecordedRequest"]

_PHONE_NUMBERS = "/v1/convai/phone-numbers"
_OUTBOUND_CALL = "/v1/convai/sip-trunk/outbound-call"
_ONE_NUMBER = re.compile(r"^/v1/convai/phone-numbers/([^/]+)$")
_TRANSPORTS = {"auto", "udp", "tcp", "tls"}
_ENCRYPTION = {"disabled", "allowed", "required"}
_CODECS = {"G722/8000", "PCMU/8000", "PCMA/8000"}


@dataclass(frozen=True)
class RecordedRequest:
    """One request as answered; `body` is the parsed JSON sent (None without one), so tests can hold what a
    client sends to the API's declared shapes."""

    method: str
    path: str
    status: int
    body: Any = None


@dataclass(frozen=True)
class OutboundCallRecord:
    agent_id: str
    agent_phone_number_id: str
    to_number: str
    conversation_id: str
    sip_call_id: str


@dataclass
class _Fault:
    status: int
    retry_after: float | None


@dataclass
class _State:
    api_key: str
    numbers: dict[str, dict[str, Any]] = field(default_factory=dict)
    faults: deque[_Fault] = field(default_factory=deque)
    latency_s: float = 0.0
    requests: list[RecordedRequest] = field(default_factory=list)
    outbound_calls: list[OutboundCallRecord] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Invalid(Exception):
    """A FastAPI-style validation failure; `errors` is the `detail` list."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__("invalid body")
        self.errors = errors


def _error(loc: list[str | int], msg: str, kind: str, value: Any) -> dict[str, Any]:
    # The real API echoes `input`; doing the same proves the client strips it from messages.
    return {"type": kind, "loc": ["body", *loc], "msg": msg, "input": value}


def _require_str(body: dict[str, Any], key: str, loc: list[str | int], errors: list[dict[str, Any]]) -> None:
    value = body.get(key)
    if key not in body:
        errors.append(_error([*loc, key], "Field required", "missing", body))
    elif not isinstance(value, str):
        errors.append(_error([*loc, key], "Input should be a valid string", "string_type", value))


def _check_enum(body: dict[str, Any], key: str, allowed: set[str], loc: list[str | int], errors: list[Any]) -> None:
    if key in body and body[key] not in allowed:
        options = ", ".join(f"'{v}'" for v in sorted(allowed))
        errors.append(_error([*loc, key], f"Input should be {options}", "enum", body[key]))


def _check_string_list(body: dict[str, Any], key: str, loc: list[str | int], errors: list[dict[str, Any]]) -> None:
    """`list[str] | None`, as the API declares `allowed_addresses` and `remote_domains`."""
    value = body.get(key)
    if value is None:
        return
    if not isinstance(value, list):
        errors.append(_error([*loc, key], "Input should be a valid list", "list_type", value))
        return
    for index, item in enumerate(value):
        if not isinstance(item, str):
            errors.append(_error([*loc, key, index], "Input should be a valid string", "string_type", item))


def _check_string_map(body: dict[str, Any], key: str, loc: list[str | int], errors: list[dict[str, Any]]) -> None:
    """`dict[str, str] | None`, as the API declares `headers` and `attributes_to_headers`."""
    value = body.get(key)
    if value is None:
        return
    if not isinstance(value, dict):
        errors.append(_error([*loc, key], "Input should be a valid dictionary", "dict_type", value))
        return
    for name, item in value.items():
        if not isinstance(item, str):
            errors.append(_error([*loc, key, name], "Input should be a valid string", "string_type", item))


def _check_credentials(config: dict[str, Any], loc: list[str | int], errors: list[dict[str, Any]]) -> None:
    creds = config.get("credentials")
    if creds is None:
        return
    if not isinstance(creds, dict):
        errors.append(_error([*loc, "credentials"], "Input should be an object", "dict_type", creds))
        return
    _require_str(creds, "username", [*loc, "credentials"], errors)
    password = creds.get("password")
    if password is not None and not isinstance(password, str):
        errors.append(
            _error([*loc, "credentials", "password"], "Input should be a valid string", "string_type", password)
        )


def _validate_trunk_configs(body: dict[str, Any], errors: list[dict[str, Any]]) -> None:
    outbound = body.get("outbound_trunk_config")
    if outbound is not None:
        if not isinstance(outbound, dict):
            errors.append(_error(["outbound_trunk_config"], "Input should be an object", "dict_type", outbound))
        else:
            _require_str(outbound, "address", ["outbound_trunk_config"], errors)
            _check_enum(outbound, "transport", _TRANSPORTS, ["outbound_trunk_config"], errors)
            _check_enum(outbound, "media_encryption", _ENCRYPTION, ["outbound_trunk_config"], errors)
            _check_credentials(outbound, ["outbound_trunk_config"], errors)
            for key in ("headers", "attributes_to_headers"):
                _check_string_map(outbound, key, ["outbound_trunk_config"], errors)
            _check_string_list(outbound, "enabled_codecs", ["outbound_trunk_config"], errors)
            for index, codec in enumerate(outbound.get("enabled_codecs") or []):
                if isinstance(codec, str) and codec not in _CODECS:
                    loc: list[str | int] = ["outbound_trunk_config", "enabled_codecs", index]
                    errors.append(_error(loc, "Input should be a known codec", "enum", codec))
    inbound = body.get("inbound_trunk_config")
    if inbound is not None:
        if not isinstance(inbound, dict):
            errors.append(_error(["inbound_trunk_config"], "Input should be an object", "dict_type", inbound))
        else:
            _check_enum(inbound, "media_encryption", _ENCRYPTION, ["inbound_trunk_config"], errors)
            for key in ("allowed_addresses", "allowed_numbers", "remote_domains"):
                _check_string_list(inbound, key, ["inbound_trunk_config"], errors)
            _check_string_map(inbound, "attributes_to_headers", ["inbound_trunk_config"], errors)
            _check_credentials(inbound, ["inbound_trunk_config"], errors)


def _merge_credentials(new: dict[str, Any], old: dict[str, Any] | None) -> dict[str, Any] | None:
    """A null password leaves the stored one unchanged, as the API documents."""
    creds = new.get("credentials")
    if creds is None:
        return None
    password = creds.get("password")
    if password is None and old is not None:
        password = old.get("password")
    return {"username": creds["username"], "password": password}


def _stored_outbound(config: dict[str, Any], old: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "address": config["address"],
        "transport": config.get("transport", "auto"),
        "media_encryption": config.get("media_encryption", "allowed"),
        "headers": dict(config.get("headers") or {}),
        "attributes_to_headers": config.get("attributes_to_headers"),
        "enabled_codecs": config.get("enabled_codecs"),
        "credentials": _merge_credentials(config, (old or {}).get("credentials")),
    }


def _stored_inbound(config: dict[str, Any], old: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "allowed_addresses": list(config.get("allowed_addresses") or []),
        "allowed_numbers": config.get("allowed_numbers"),
        "media_encryption": config.get("media_encryption", "allowed"),
        "remote_domains": config.get("remote_domains"),
        "attributes_to_headers": config.get("attributes_to_headers"),
        "credentials": _merge_credentials(config, (old or {}).get("credentials")),
    }


def _public(record: dict[str, Any]) -> dict[str, Any]:
    """The GET shape: credentials reduced to `has_auth_credentials` + `username`."""
    out = {k: v for k, v in record.items() if k not in {"outbound", "inbound", "agent_id"}}
    out["assigned_agent"] = (
        {"agent_id": record["agent_id"], "agent_name": f"Agent {record['agent_id']}"} if record["agent_id"] else None
    )
    for key, stored in (("outbound_trunk", record["outbound"]), ("inbound_trunk", record["inbound"])):
        if stored is None:
            out[key] = None
            continue
        view = {k: v for k, v in stored.items() if k != "credentials"}
        creds = stored["credentials"]
        view["has_auth_credentials"] = bool(creds and creds.get("password"))
        view["username"] = creds["username"] if creds else None
        if key == "outbound_trunk":
            view["has_outbound_trunk"] = True
        out[key] = view
    out["provider_config"] = out["outbound_trunk"]
    return out


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        """Silence per-request stderr lines; tests read `requests` instead."""

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    # -------------------------------------------------------------------------------------------------
    def _dispatch(self, method: str) -> None:
        state = self.server.state
        path = self.path.split("?", 1)[0]
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        with state.lock:
            latency = state.latency_s
            fault = state.faults.popleft() if state.faults else None
        if latency:
            time.sleep(latency)
        if fault is not None:
            headers = {} if fault.retry_after is None else {"Retry-After": f"{fault.retry_after:g}"}
            message = "Too many concurrent requests" if fault.status == 429 else "Service unavailable"
            self._send(
                method, path, fault.status, {"detail": {"status": "injected_fault", "message": message}}, headers
            )
            return
        if not secrets.compare_digest(self.headers.get("xi-api-key", ""), state.api_key):
            self._send(method, path, 401, {"detail": {"status": "invalid_api_key", "message": "Invalid API key"}})
            return
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            self._send(method, path, 422, {"detail": [_error([], "JSON decode error", "json_invalid", None)]})
            return
        try:
            status, payload = self._route(method, path, body)
        except _Invalid as exc:
            status, payload = 422, {"detail": exc.errors}
        self._send(method, path, status, payload, body=body)

    def _route(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        state = self.server.state
        match = _ONE_NUMBER.match(path)
        with state.lock:
            if path == _PHONE_NUMBERS and method == "GET":
                return 200, [_public(r) for r in state.numbers.values()]
            if path == _PHONE_NUMBERS and method == "POST":
                return self._create(body)
            if match and method == "GET":
                record = state.numbers.get(match.group(1))
                return (200, _public(record)) if record else _not_found(match.group(1))
            if match and method == "PATCH":
                return self._update(match.group(1), body)
            if match and method == "DELETE":
                if state.numbers.pop(match.group(1), None) is None:
                    return _not_found(match.group(1))
                return 200, {}
            if path == _OUTBOUND_CALL and method == "POST":
                return self._outbound_call(body)
        return 404, {"detail": "Not Found"}

    def _create(self, body: Any) -> tuple[int, Any]:
        if not isinstance(body, dict):
            raise _Invalid([_error([], "Input should be an object", "dict_type", body)])
        errors: list[dict[str, Any]] = []
        if body.get("provider", "sip_trunk") != "sip_trunk":
            errors.append(_error(["provider"], "Only 'sip_trunk' is emulated", "literal_error", body["provider"]))
        _require_str(body, "phone_number", [], errors)
        _require_str(body, "label", [], errors)
        _validate_trunk_configs(body, errors)
        if errors:
            raise _Invalid(errors)
        numbers = self.server.state.numbers
        if any(r["phone_number"] == body["phone_number"] for r in numbers.values()):
            return 400, {"detail": {"status": "phone_number_exists", "message": "Phone number already exists"}}
        phone_number_id = "phnum_" + secrets.token_hex(10)
        outbound = body.get("outbound_trunk_config")
        inbound = body.get("inbound_trunk_config")
        numbers[phone_number_id] = {
            "phone_number_id": phone_number_id,
            "phone_number": body["phone_number"],
            "label": body["label"],
            "provider": "sip_trunk",
            "supports_inbound": True,
            "supports_outbound": True,
            "livekit_stack": "standard",
            "agent_id": body.get("agent_id"),
            "outbound": _stored_outbound(outbound, None) if outbound else None,
            "inbound": _stored_inbound(inbound, None) if inbound else None,
        }
        return 200, {"phone_number_id": phone_number_id}

    def _update(self, phone_number_id: str, body: Any) -> tuple[int, Any]:
        record = self.server.state.numbers.get(phone_number_id)
        if record is None:
            return _not_found(phone_number_id)
        if not isinstance(body, dict):
            raise _Invalid([_error([], "Input should be an object", "dict_type", body)])
        errors: list[dict[str, Any]] = []
        if "label" in body and body["label"] is not None and not isinstance(body["label"], str):
            errors.append(_error(["label"], "Input should be a valid string", "string_type", body["label"]))
        _validate_trunk_configs(body, errors)
        if errors:
            raise _Invalid(errors)
        if body.get("label") is not None:
            record["label"] = body["label"]
        if "agent_id" in body:
            record["agent_id"] = body["agent_id"]
        if body.get("outbound_trunk_config") is not None:
            record["outbound"] = _stored_outbound(body["outbound_trunk_config"], record["outbound"])
        if body.get("inbound_trunk_config") is not None:
            record["inbound"] = _stored_inbound(body["inbound_trunk_config"], record["inbound"])
        return 200, _public(record)

    def _outbound_call(self, body: Any) -> tuple[int, Any]:
        if not isinstance(body, dict):
            raise _Invalid([_error([], "Input should be an object", "dict_type", body)])
        errors: list[dict[str, Any]] = []
        for key in ("agent_id", "agent_phone_number_id", "to_number"):
            _require_str(body, key, [], errors)
        if errors:
            raise _Invalid(errors)
        state = self.server.state
        if body["agent_phone_number_id"] not in state.numbers:
            return _not_found(body["agent_phone_number_id"])
        record = OutboundCallRecord(
            agent_id=body["agent_id"],
            agent_phone_number_id=body["agent_phone_number_id"],
            to_number=body["to_number"],
            conversation_id="conv_" + secrets.token_hex(8),
            sip_call_id="SCL_" + secrets.token_hex(8),
        )
        state.outbound_calls.append(record)
        return 200, {
            "success": True,
            "message": "Outbound call initiated",
            "conversation_id": record.conversation_id,
            "sip_call_id": record.sip_call_id,
        }

    def _send(
        self,
        method: str,
        path: str,
        status: int,
        payload: Any,
        headers: dict[str, str] | None = None,
        *,
        body: Any = None,
    ) -> None:
        # Recorded before answering, so a client that has its answer always finds the request logged.
        record = RecordedRequest(method=method, path=path, status=status, body=body)
        with self.server.state.lock:
            self.server.state.requests.append(record)
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)


def _not_found(phone_number_id: str) -> tuple[int, Any]:
    return 404, {"detail": {"status": "phone_number_not_found", "message": f"Phone number {phone_number_id} not found"}}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    state: _State

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that timed out and hung up is an expected fault-injection outcome, not an error."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class ElevenLabsStandIn:
    """Start with `with ElevenLabsStandIn(api_key) as api:` and point the client at `api.url`."""

    def __init__(self, api_key: str, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self._state = _State(api_key=api_key)
        self._address = (host, port)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"ElevenLabsStandIn(url={self.url if self._server else None!r})"

    # --------------------------------------------------------------------------------- lifecycle
    def start(self) -> ElevenLabsStandIn:
        if self._server is not None:
            return self
        server = _Server(self._address, _Handler)
        server.state = self._state
        self._server = server
        # A short poll keeps stop() (and so every test teardown) fast.
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="elevenlabs-stand-in", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self) -> ElevenLabsStandIn:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("stand-in is not running")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    # --------------------------------------------------------------------------- fault injection
    def fail_next(self, count: int, status: int = 503, *, retry_after: float | None = None) -> None:
        """Answer the next `count` requests with `status` (before auth, like an edge proxy would)."""
        with self._state.lock:
            self._state.faults.extend(_Fault(status=status, retry_after=retry_after) for _ in range(count))

    def rate_limit_next(self, count: int, *, retry_after: float = 1.0) -> None:
        self.fail_next(count, 429, retry_after=retry_after)

    def set_latency(self, seconds: float) -> None:
        with self._state.lock:
            self._state.latency_s = seconds

    def clear_faults(self) -> None:
        with self._state.lock:
            self._state.faults.clear()
            self._state.latency_s = 0.0

    # ------------------------------------------------------------------------------ inspection
    @property
    def requests(self) -> list[RecordedRequest]:
        with self._state.lock:
            return list(self._state.requests)

    @property
    def outbound_calls(self) -> list[OutboundCallRecord]:
        with self._state.lock:
            return list(self._state.outbound_calls)

    def number(self, phone_number_id: str) -> dict[str, Any]:
        """The GET view of a stored number, read without going through HTTP."""
        with self._state.lock:
            return _public(self._state.numbers[phone_number_id])

    def edit(
        self, phone_number_id: str, *, inbound: dict[str, Any] | None = None, outbound: dict[str, Any] | None = None
    ) -> None:
        """Change stored trunk fields directly, as an operator does in the dashboard (no validation, no HTTP)."""
        with self._state.lock:
            record = self._state.numbers[phone_number_id]
            for key, changes in (("inbound", inbound), ("outbound", outbound)):
                if changes:
                    if record[key] is None:
                        raise ValueError(f"number {phone_number_id} has no {key} trunk to edit")
                    record[key].update(changes)

    def stored_password(self, phone_number_id: str, direction: str = "outbound") -> str | None:
        """What the API would hold but never return, so tests can prove a rotation reached it."""
        with self._state.lock:
            stored = self._state.numbers[phone_number_id][direction]
            creds = stored["credentials"] if stored else None
            return creds["password"] if creds else None
