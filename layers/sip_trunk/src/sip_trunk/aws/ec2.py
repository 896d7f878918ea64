"""EC2: the Elastic IP and the hosts it can point at."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sip_trunk.aws.clients import client
from sip_trunk.workflows.ports import ElasticAddress, Instance


class Ec2Addresses:
    def __init__(self, ec2: Any | None = None) -> None:
        self._ec2 = ec2

    @property
    def ec2(self) -> Any:
        return self._ec2 or client("ec2")

    def describe_address(self, allocation_id: str) -> ElasticAddress:
        found = self.ec2.describe_addresses(AllocationIds=[allocation_id])["Addresses"][0]
        return ElasticAddress(
            allocation_id=allocation_id,
            public_ip=found["PublicIp"],
            instance_id=found.get("InstanceId") or None,
            association_id=found.get("AssociationId") or None,
        )

    def associate(self, allocation_id: str, instance_id: str) -> str:
        response = self.ec2.associate_address(
            AllocationId=allocation_id, InstanceId=instance_id, AllowReassociation=True
        )
        return str(response.get("AssociationId", ""))

    def instances(self, instance_ids: Sequence[str]) -> list[Instance]:
        if not instance_ids:
            return []
        out: list[Instance] = []
        pages = self.ec2.get_paginator("describe_instances").paginate(InstanceIds=list(instance_ids))
        for page in pages:
            for reservation in page["Reservations"]:
                for item in reservation["Instances"]:
                    out.append(
                        Instance(
                            instance_id=item["InstanceId"],
                            state=item["State"]["Name"],
                            public_ip=item.get("PublicIpAddress"),
                            private_ip=item.get("PrivateIpAddress"),
                        )
                    )
        return out
