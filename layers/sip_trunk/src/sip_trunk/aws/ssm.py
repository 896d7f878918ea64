"""Parameter Store: the settings document, secret references and the config store."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from aws_lambda_powertools.utilities import parameters
from botocore.exceptions import ClientError

from sip_trunk import configstore
from sip_trunk.aws.clients import aws_call, client, error_code
from sip_trunk.manifest import MANIFEST_NAME

CACHE_SECONDS = 60
NOT_FOUND_CODES = frozenset({"ParameterNotFound", "ResourceNotFoundException"})

T = TypeVar("T")


def _powertools_call(what: str, call: Callable[[], T]) -> T:
    """A read through the Parameters utility under the adapters' error contract: the utility wraps every
    botocore error in `GetParameterError`, which would hide throttling (retryable) behind a plain failure and a
    denied call behind a missing value. The botocore error it wrapped is raised instead, through `aws_call`."""
    try:
        return call()
    except parameters.exceptions.GetParameterError as exc:
        wrapped = exc.__cause__ or exc.__context__
        if not isinstance(wrapped, ClientError):
            raise
        with aws_call(what):
            raise wrapped from None


def _get_parameter(ssm: Any | None, name: str, **options: Any) -> Any:
    """One parameter through the utility's default provider (cached across warm invocations), or through a
    provider over the given client; every read of this module goes through here."""
    if ssm is None:
        return _powertools_call("GetParameter", lambda: parameters.get_parameter(name, **options))
    provider = parameters.SSMProvider(boto3_client=ssm)
    return _powertools_call("GetParameter", lambda: provider.get(name, **options))


def _get_secret(secrets: Any | None, name: str, **options: Any) -> Any:
    if secrets is None:
        return _powertools_call("GetSecretValue", lambda: parameters.get_secret(name, **options))
    provider = parameters.SecretsProvider(boto3_client=secrets)
    return _powertools_call("GetSecretValue", lambda: provider.get(name, **options))


class SsmSettingsSource:
    """The settings JSON written by the template (through the Parameters utility's cache) and the operator's
    document (read on every call: a `sip-trunk push` starts Provision right after storing it, and a warm
    function must not render the previous one)."""

    def __init__(
        self, name: str, operator_name: str = "", max_age_s: int = CACHE_SECONDS, ssm: Any | None = None
    ) -> None:
        self.name = name
        self.operator_name = operator_name
        self.max_age_s = max_age_s
        self._ssm = ssm

    def settings_document(self) -> Any:
        return json.loads(str(_get_parameter(self._ssm, self.name, max_age=self.max_age_s)))

    @property
    def ssm(self) -> Any:
        return self._ssm or client("ssm")

    def operator_document(self) -> Any | None:
        if not self.operator_name:
            return None
        try:
            with aws_call("GetParameter"):
                raw = self.ssm.get_parameter(Name=self.operator_name)["Parameter"]["Value"]
        except ClientError as exc:
            if error_code(exc) == "ParameterNotFound":
                return None
            raise
        return json.loads(str(raw))


class JsonParameterReader:
    """Any String parameter holding JSON (e.g. the host stack's parameters), cached."""

    def __init__(self, max_age_s: int = CACHE_SECONDS, ssm: Any | None = None) -> None:
        self.max_age_s = max_age_s
        self._ssm = ssm

    def get_json(self, name: str) -> Any:
        return _get_parameter(self._ssm, name, transform="json", max_age=self.max_age_s)

    def get_text(self, name: str) -> str:
        return str(_get_parameter(self._ssm, name, force_fetch=True))


class ParameterSecretResolver:
    """`ssm:/name` (SecureString, decrypted) or `secretsmanager:name`, cached by the Parameters utility.

    Only a value that does not exist is `KeyError` (the domain reports it as a missing secret); throttling is
    `AwsThrottled` and a denied read passes as `ClientError`, so neither is mistaken for a missing secret."""

    def __init__(self, max_age_s: int = CACHE_SECONDS, ssm: Any | None = None, secrets: Any | None = None) -> None:
        self.max_age_s = max_age_s
        self._ssm = ssm
        self._secrets = secrets

    def resolve(self, ref: str) -> str:
        try:
            if ref.startswith("ssm:"):
                return str(_get_parameter(self._ssm, ref[len("ssm:") :], decrypt=True, max_age=self.max_age_s))
            if ref.startswith("secretsmanager:"):
                return str(_get_secret(self._secrets, ref[len("secretsmanager:") :], max_age=self.max_age_s))
        except ClientError as exc:
            if error_code(exc) in NOT_FOUND_CODES:
                raise KeyError(ref) from None
            raise
        raise KeyError(ref)


class SsmConfigStore:
    """`sip_trunk.configstore` bound to a client and a prefix."""

    def __init__(self, prefix: str, ssm: Any | None = None) -> None:
        self.prefix = prefix.rstrip("/")
        self._ssm = ssm

    @property
    def ssm(self) -> Any:
        return self._ssm or client("ssm")

    def has_version(self, version: str) -> bool:
        try:
            with aws_call("GetParameter"):
                self.ssm.get_parameter(Name=f"{self.prefix}/{version}/{MANIFEST_NAME}")
        except ClientError as exc:
            if error_code(exc) == "ParameterNotFound":
                return False
            raise
        return True

    def publish(self, files: Mapping[str, bytes], secret_files: frozenset[str], version: str) -> None:
        with aws_call("PutParameter"):
            configstore.publish_config(self.ssm, self.prefix, files, secret_files, version)

    def desired_version(self) -> str | None:
        with aws_call("GetParameter"):
            return configstore.get_desired_version(self.ssm, self.prefix)

    def set_desired_version(self, version: str) -> None:
        with aws_call("PutParameter"):
            configstore.set_desired_version(self.ssm, self.prefix, version)

    def clear_desired_version(self) -> None:
        try:
            with aws_call("DeleteParameter"):
                self.ssm.delete_parameter(Name=f"{self.prefix}/{configstore.DESIRED_VERSION}")
        except ClientError as exc:
            if error_code(exc) != "ParameterNotFound":
                raise

    def snapshot(self) -> list[dict[str, Any]]:
        """Every parameter under the prefix. SecureString values are never decrypted: only their hash
        of the ciphertext-free metadata is kept, and they are re-rendered from settings + secrets."""
        out: list[dict[str, Any]] = []
        paginator = self.ssm.get_paginator("get_parameters_by_path")
        with aws_call("GetParametersByPath"):
            pages = list(paginator.paginate(Path=self.prefix + "/", Recursive=True, WithDecryption=False))
        for page in pages:
            for param in page.get("Parameters", []):
                item: dict[str, Any] = {
                    "name": param["Name"],
                    "type": param["Type"],
                    "version": param.get("Version"),
                }
                if param["Type"] == "SecureString":
                    item["value_sha256_of_ciphertext"] = hashlib.sha256(param["Value"].encode()).hexdigest()
                else:
                    item["value"] = param["Value"]
                out.append(item)
        return out
