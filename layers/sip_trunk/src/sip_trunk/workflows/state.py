"""Records of the state table (DynamoDB, CONTRACTS.md "State table")."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

DEPLOYMENT_KEY = {"pk": "deployment", "sk": "current"}
LOCK_KEY = {"pk": "lock#failover", "sk": "lock"}
HEALTH_KEY = {"pk": "health#address", "sk": "probe"}


def heartbeat_key(instance_id: str) -> dict[str, str]:
    return {"pk": f"host#{instance_id}", "sk": "heartbeat"}


def history_key(timestamp: str, execution: str) -> dict[str, str]:
    return {"pk": "deployment", "sk": f"history#{timestamp}#{execution}"}


class _Record(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Deployment(_Record):
    """`pk=deployment, sk=current`: what is deployed and who serves the Elastic IP."""

    desired_version: str | None = None
    active_version: str | None = None
    host_stack_name: str | None = None
    primary_instance_id: str | None = None
    standby_instance_id: str | None = None
    allocation_id: str | None = None
    public_address: str | None = None
    phone_number_id: str | None = None
    credentials_hash: str | None = Field(default=None, description="sha256 of the trunk passwords last synced")
    last_execution: str | None = None
    last_outcome: Literal["succeeded", "failed"] | None = None
    updated_at: float | None = None

    def hosts(self) -> list[str]:
        return [i for i in (self.primary_instance_id, self.standby_instance_id) if i]


class HostHeartbeat(_Record):
    """`pk=host#<instance-id>, sk=heartbeat`: written by `sip-trunk-agent report` on the host."""

    instance_id: str
    running_version: str | None = None
    asterisk_up: bool = False
    endpoint_loaded: bool = Field(default=False, description="the ElevenLabs endpoint is loaded in PJSIP")
    qualify: str | None = Field(default=None, description="qualify status towards ElevenLabs; reported only")
    apply_error: str | None = None
    reported_at: float = 0.0

    def fresh(self, now: float, max_age_s: float) -> bool:
        return now - self.reported_at <= max_age_s


class HealthCounter(_Record):
    """`pk=health#address, sk=probe`: consecutive failed probes of the Elastic IP."""

    consecutive_failures: int = 0
    last_probe_at: float = 0.0
    failover_started: str | None = None
