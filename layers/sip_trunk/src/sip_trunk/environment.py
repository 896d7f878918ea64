"""The functions' environment, read once per container (cold start) into `WorkflowConfig`.

The composition root's side of the configuration: the workflows receive the parsed model through `Deps`
and never read `os.environ` themselves."""

from __future__ import annotations

import os
from functools import lru_cache

from sip_trunk.workflows.config import WorkflowConfig, parse_config


@lru_cache(maxsize=1)
def load_config() -> WorkflowConfig:
    """The environment, read on first use (cold start) and cached for the container's life."""
    return parse_config(os.environ)
