"""What the functions know about their deployment, as a validated model (`parse_config` takes the environment as a
mapping; `sip_trunk.environment` reads `os.environ`, outside the domain)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from sip_trunk.errors import SettingsInvalid

ProbeTargets = dict[str, str]


class WorkflowConfig(BaseModel):
    """What every function knows about its deployment (CONTRACTS.md, "Environment variables")."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    stack_name: Annotated[str, Field(alias="STACK_NAME", min_length=1)]
    config_prefix: Annotated[str, Field(alias="CONFIG_PREFIX", pattern=r"^/[A-Za-z0-9_./-]+$")]
    settings_parameter: Annotated[str, Field(alias="SETTINGS_PARAMETER", pattern=r"^/[A-Za-z0-9_./-]+$")]
    operator_settings_parameter: Annotated[
        str, Field(alias="OPERATOR_SETTINGS_PARAMETER", pattern=r"^(/[A-Za-z0-9_./-]+)?$")
    ] = ""
    """The operator's settings document (`sip-trunk push`); not a stack resource. Empty: none is read."""
    state_table: Annotated[str, Field(alias="STATE_TABLE", min_length=1)]
    backup_bucket: Annotated[str, Field(alias="BACKUP_BUCKET")] = ""
    recordings_bucket: Annotated[str, Field(alias="RECORDINGS_BUCKET")] = ""
    notification_topic_arn: Annotated[str, Field(alias="NOTIFICATION_TOPIC_ARN")] = ""
    host_template_url: Annotated[str, Field(alias="HOST_TEMPLATE_URL")] = ""
    host_template_file: Annotated[str, Field(alias="HOST_TEMPLATE_FILE")] = ""
    """The host template shipped in the layer; LaunchHost publishes it to HOST_TEMPLATE_URL when it differs."""
    host_parameters_parameter: Annotated[str, Field(alias="HOST_PARAMETERS_PARAMETER")] = ""
    """SSM parameter holding the host stack's parameters as a JSON object (written by the root stack)."""
    host_stack_role_arn: Annotated[str, Field(alias="HOST_STACK_ROLE_ARN")] = ""
    network_stack_name: Annotated[str, Field(alias="NETWORK_STACK_NAME")] = ""
    primary_allocation_id: Annotated[str, Field(alias="PRIMARY_ALLOCATION_ID")] = ""
    failover_state_machine_arn: Annotated[str, Field(alias="FAILOVER_STATE_MACHINE_ARN")] = ""

    # Tunables with production defaults (optional environment variables).
    host_stack_name_override: Annotated[str, Field(alias="HOST_STACK_NAME")] = ""
    elevenlabs_api_url: Annotated[str, Field(alias="ELEVENLABS_API_URL")] = "https://api.elevenlabs.io"
    stack_timeout_s: Annotated[int, Field(alias="STACK_TIMEOUT_S", ge=60)] = 1800
    apply_timeout_s: Annotated[int, Field(alias="APPLY_TIMEOUT_S", ge=10)] = 600
    verify_timeout_s: Annotated[int, Field(alias="VERIFY_TIMEOUT_S", ge=10)] = 300
    probe_timeout_s: Annotated[float, Field(alias="PROBE_TIMEOUT_S", gt=0, le=30)] = 3.0
    heartbeat_max_age_s: Annotated[int, Field(alias="HEARTBEAT_MAX_AGE_S", ge=30)] = 180
    failure_threshold: Annotated[int, Field(alias="FAILOVER_AFTER_FAILURES", ge=1, le=60)] = 3
    lock_ttl_s: Annotated[int, Field(alias="FAILOVER_LOCK_TTL_S", ge=60)] = 900
    certificate_min_days: Annotated[int, Field(alias="CERTIFICATE_MIN_DAYS", ge=1, le=365)] = 14
    """VerifyTrunk refuses a gateway certificate (transport tls) with fewer whole days left than this."""
    probe_function: Annotated[str, Field(alias="PROBE_FUNCTION")] = ""
    """The in-VPC probe function (ADR-27): set when the hosts admit SIP only from named networks, so probes
    go to the Elastic IP holder's private address from inside the VPC. Empty: probe the address itself."""
    probe_targets: Annotated[ProbeTargets, Field(alias="PROBE_TARGETS")] = Field(default_factory=dict)
    """Address → `host:port` to probe instead. Empty in production (probe the address itself); local
    mode and tests map the Elastic IP to a responder on 127.0.0.1."""

    @field_validator("probe_targets", mode="before")
    @classmethod
    def _json_mapping(cls, value: Any) -> Any:
        if isinstance(value, str):
            return json.loads(value) if value.strip() else {}
        return value

    @property
    def host_stack_name(self) -> str:
        return self.host_stack_name_override or f"{self.stack_name}-host"


def parse_config(environ: Mapping[str, str]) -> WorkflowConfig:
    try:
        return WorkflowConfig.model_validate(dict(environ))
    except (ValidationError, ValueError) as exc:
        raise SettingsInvalid(f"function environment is invalid: {exc}") from None
