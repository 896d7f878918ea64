"""EC2: the Elastic IP and the hosts it can point at."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from botocore.exceptions import ClientError

from sip_trunk.aws.clients import aws_call, client, error_code
from sip_trunk.errors import AddressRefused
from sip_trunk.workflows.ports import ElasticAddress, Instance

GONE = "InvalidInstanceID.NotFound"
"""DescribeInstances' answer for an id EC2 does not know (any more): the whole call fails with it."""
REFUSED = frozenset(
    {
        "IncorrectInstanceState",
        "InvalidInstanceID",
        "InvalidInstanceID.NotFound",
        "InvalidAllocationID.NotFound",
        "Resource.AlreadyAssociated",
    }
)
"""AssociateAddress codes that say the target cannot take the address (as opposed to a denied or bad call)."""


class Ec2Addresses:
    def __init__(self, ec2: Any | None = None) -> None:
        self._ec2 = ec2

    @property
    def ec2(self) -> Any:
        return self._ec2 or client("ec2")

    def describe_address(self, allocation_id: str) -> ElasticAddress:
        with aws_call("DescribeAddresses"):
            found = self.ec2.describe_addresses(AllocationIds=[allocation_id])["Addresses"][0]
        return ElasticAddress(
            allocation_id=allocation_id,
            public_ip=found["PublicIp"],
            instance_id=found.get("InstanceId") or None,
            association_id=found.get("AssociationId") or None,
        )

    def associate(self, allocation_id: str, instance_id: str) -> str:
        try:
            with aws_call("AssociateAddress"):
                response = self.ec2.associate_address(
                    AllocationId=allocation_id, InstanceId=instance_id, AllowReassociation=True
                )
        except ClientError as exc:
            if error_code(exc) in REFUSED:
                raise AddressRefused(f"{error_code(exc)}: {exc}") from exc
            raise
        return str(response.get("AssociationId", ""))

    def instances(self, instance_ids: Sequence[str]) -> list[Instance]:
        """The instances EC2 knows among `instance_ids`; an id it does not know (terminated and gone) is absent."""
        ids = list(dict.fromkeys(instance_ids))
        if not ids:
            return []
        try:
            return self._describe(ids)
        except ClientError as exc:
            if error_code(exc) != GONE:
                raise
        if len(ids) == 1:
            return []
        return [found for instance_id in ids for found in self.instances([instance_id])]

    def _describe(self, instance_ids: list[str]) -> list[Instance]:
        out: list[Instance] = []
        with aws_call("DescribeInstances"):
            pages = self.ec2.get_paginator("describe_instances").paginate(InstanceIds=instance_ids)
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
