"""Strict conformance of JSON bodies to the official ElevenLabs SDK models.

The SDK's models are lenient on purpose (`UncheckedBaseModel`, `extra="allow"`, enums typed
`Union[Literal[...], Any]`), so validating with them proves nothing. This walks their declared fields instead:
every key must be declared, every required field present, every Literal value one of the literals (the `Any`
arm that keeps the SDK forward-compatible is ignored), lists, dicts and nested models checked recursively.
"""

from __future__ import annotations

import inspect
import types
import typing
from typing import Any, Literal, Union

import pydantic
from elevenlabs.conversational_ai.phone_numbers.raw_client import RawPhoneNumbersClient
from elevenlabs.conversational_ai.phone_numbers.types.phone_numbers_create_request_body import (
    PhoneNumbersCreateRequestBody_SipTrunk,
)
from elevenlabs.conversational_ai.phone_numbers.types.phone_numbers_get_response import (
    PhoneNumbersGetResponse_SipTrunk,
)
from elevenlabs.conversational_ai.phone_numbers.types.phone_numbers_list_response_item import (
    PhoneNumbersListResponseItem_SipTrunk,
)
from elevenlabs.conversational_ai.phone_numbers.types.phone_numbers_update_response import (
    PhoneNumbersUpdateResponse_SipTrunk,
)
from elevenlabs.types import CreatePhoneNumberResponseModel

__all__ = [
    "CREATE_REQUEST",
    "CREATE_RESPONSE",
    "GET_RESPONSE",
    "LIST_ITEM",
    "UPDATE_REQUEST",
    "UPDATE_RESPONSE",
    "conformance_errors",
]


def _update_request_model() -> type[pydantic.BaseModel]:
    """The PATCH body as the SDK's `update` call declares it (keyword parameters, all optional)."""
    hints = typing.get_type_hints(RawPhoneNumbersClient.update)
    fields: dict[str, Any] = {
        name: (hints[name], None)
        for name in inspect.signature(RawPhoneNumbersClient.update).parameters
        if name not in {"self", "phone_number_id", "request_options"}
    }
    return pydantic.create_model("UpdatePhoneNumberRequest", **fields)


CREATE_REQUEST: type[pydantic.BaseModel] = PhoneNumbersCreateRequestBody_SipTrunk
UPDATE_REQUEST: type[pydantic.BaseModel] = _update_request_model()
CREATE_RESPONSE: type[pydantic.BaseModel] = CreatePhoneNumberResponseModel
GET_RESPONSE: type[pydantic.BaseModel] = PhoneNumbersGetResponse_SipTrunk
LIST_ITEM: type[pydantic.BaseModel] = PhoneNumbersListResponseItem_SipTrunk
UPDATE_RESPONSE: type[pydantic.BaseModel] = PhoneNumbersUpdateResponse_SipTrunk

_SCALARS: dict[type, tuple[type, ...]] = {str: (str,), bool: (bool,), int: (int,), float: (int, float)}


def conformance_errors(model: type[pydantic.BaseModel], data: Any, path: str = "$") -> list[str]:
    """Every way `data` departs from `model`; empty when it conforms."""
    if not isinstance(data, dict):
        return [f"{path}: expected an object for {model.__name__}, got {type(data).__name__}"]
    errors: list[str] = []
    declared = {(info.alias or name): info for name, info in model.model_fields.items()}
    for key in data:
        if key not in declared:
            errors.append(f"{path}.{key}: not a field of {model.__name__}")
    for key, info in declared.items():
        if key not in data:
            if info.is_required():
                errors.append(f"{path}.{key}: required by {model.__name__} but missing")
            continue
        errors.extend(_check(info.annotation, data[key], f"{path}.{key}"))
    return errors


def _check(annotation: Any, value: Any, path: str) -> list[str]:
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        arms = [a for a in typing.get_args(annotation) if a is not Any]
        if value is None and type(None) in arms:
            return []
        arms = [a for a in arms if a is not type(None)]
        results = [_check(arm, value, path) for arm in arms]
        if not results or any(not r for r in results):
            return []
        return results[0] if len(results) == 1 else [f"{path}: {value!r} matches none of {arms}"]
    if origin is Literal:
        allowed = typing.get_args(annotation)
        return [] if value in allowed else [f"{path}: {value!r} is not one of {list(allowed)}"]
    if origin is list:
        if not isinstance(value, list):
            return [f"{path}: expected a list, got {type(value).__name__}"]
        (item,) = typing.get_args(annotation)
        return [e for index, v in enumerate(value) for e in _check(item, v, f"{path}[{index}]")]
    if origin is dict:
        if not isinstance(value, dict):
            return [f"{path}: expected an object, got {type(value).__name__}"]
        key_type, item = typing.get_args(annotation)
        out = [e for k in value for e in _check(key_type, k, f"{path}<key {k!r}>")]
        return out + [e for k, v in value.items() for e in _check(item, v, f"{path}.{k}")]
    if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
        return conformance_errors(annotation, value, path)
    if annotation is Any:
        return []
    if annotation is type(None):
        return [] if value is None else [f"{path}: expected null, got {value!r}"]
    if annotation in _SCALARS:
        ok = isinstance(value, _SCALARS[annotation]) and not (annotation is not bool and isinstance(value, bool))
        return [] if ok else [f"{path}: expected {annotation.__name__}, got {type(value).__name__}"]
    return [f"{path}: the checker does not know the SDK type {annotation!r}"]
