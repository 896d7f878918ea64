"""The one place that creates the Powertools logger, tracer and metrics, plus the idempotency store.

Service name and metric namespace come from `POWERTOOLS_SERVICE_NAME` / `POWERTOOLS_METRICS_NAMESPACE`
(template `Globals`). Creating these objects reads no AWS API; boto3 clients appear on first use only.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import TypeVar

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.utilities.idempotency import (
    DynamoDBPersistenceLayer,
    IdempotencyConfig,
    idempotent_function,
)
from aws_lambda_powertools.utilities.idempotency.serialization.pydantic import PydanticSerializer
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import BaseModel

from sip_trunk.environment import load_config

logger = Logger(utc=True)
tracer = Tracer()
metrics = Metrics()

CORRELATION_PATH = "execution.name"
"""Every state-machine Task passes `$$.Execution.Name` there: the execution name is the correlation id."""

IDEMPOTENCY_TTL_S = 24 * 3600

R = TypeVar("R", bound=BaseModel)
M = TypeVar("M", bound=BaseModel)


@lru_cache(maxsize=1)
def idempotency_store() -> DynamoDBPersistenceLayer:
    """Idempotency records live in the state table under `pk=idempotency#<function>` (CONTRACTS.md)."""
    return DynamoDBPersistenceLayer(
        table_name=load_config().state_table,
        key_attr="pk",
        sort_key_attr="sk",
        expiry_attr="expires_at",
    )


def run_idempotent(func: Callable[[M], R], *, request: M, returns: type[R], context: LambdaContext | None = None) -> R:
    """Call `func(request)` at most once per distinct `request` (within a day): a retried Lambda
    invocation gets the stored result instead of changing the world twice."""
    config = IdempotencyConfig(expires_after_seconds=IDEMPOTENCY_TTL_S, raise_on_no_idempotency_key=True)
    if context is not None:
        config.register_lambda_context(context)

    def call(request: M) -> R:
        return func(request)

    call.__name__ = call.__qualname__ = func.__name__
    call.__module__ = func.__module__
    wrapped = idempotent_function(
        call,
        data_keyword_argument="request",
        persistence_store=idempotency_store(),
        config=config,
        output_serializer=PydanticSerializer(model=returns),
    )
    result: R = wrapped(request=request)
    return result


def reset() -> None:
    idempotency_store.cache_clear()
