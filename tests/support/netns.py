"""Network namespaces and the emulated Elastic IP NAT: :mod:`sip_trunk_local.netns` (shared with local mode)."""

from __future__ import annotations

from sip_trunk_local.netns import ElasticIpTopology, LocalTopology, NamespaceSet, NetnsError, in_ns, run

__all__ = ["ElasticIpTopology", "LocalTopology", "NamespaceSet", "NetnsError", "in_ns", "run"]
