"""Temporal client set-up shared by API, worker, agent and tests (one data converter everywhere)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest, ListSearchAttributesRequest
from temporalio.client import Client, Interceptor
from temporalio.common import SearchAttributeKey
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.runtime import Runtime

from boxrun.constants import SA_BOX_ID, SA_JOB_STATE, SA_OWNER, SA_PIPELINE_ID, SEARCH_ATTRIBUTES

log = logging.getLogger(__name__)

KEY_JOB_STATE = SearchAttributeKey.for_keyword(SA_JOB_STATE)
KEY_BOX_ID = SearchAttributeKey.for_keyword(SA_BOX_ID)
KEY_OWNER = SearchAttributeKey.for_keyword(SA_OWNER)
KEY_PIPELINE_ID = SearchAttributeKey.for_keyword(SA_PIPELINE_ID)

# Exceptions that mean a bug in workflow code. Given as a workflow's failure_exception_types they
# fail the workflow instead of its task (which Temporal retries forever). Not `Exception`: that
# would include NondeterminismError, and a deploy that breaks determinism should leave running
# workflows waiting for a fixed worker, not fail them all.
BUG_TYPES: Sequence[type[BaseException]] = (
    ArithmeticError,
    AssertionError,
    AttributeError,
    LookupError,
    NameError,
    RuntimeError,
    TypeError,
    ValueError,  # pydantic's ValidationError included
)


async def connect(
    address: str,
    namespace: str = "default",
    *,
    runtime: Runtime | None = None,
    interceptors: Sequence[Interceptor] = (),
) -> Client:
    """A client with boxrun's data converter. `runtime`: the control worker's, whose telemetry
    exports Prometheus metrics; `interceptors`: boxrun.propagation's (the request id header)."""
    return await Client.connect(
        address,
        namespace=namespace,
        data_converter=pydantic_data_converter,
        runtime=runtime,
        interceptors=interceptors,
    )


async def ensure_search_attributes(client: Client) -> None:
    """Register JobState/BoxId/Owner/PipelineId as Keyword attributes if the namespace lacks them
    (the dev server registers them at start; a fresh production namespace may not)."""
    listed = await client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace=client.namespace)
    )
    missing = [name for name in SEARCH_ATTRIBUTES if name not in listed.custom_attributes]
    if missing:
        log.info("registering search attributes %s", missing)
        await client.operator_service.add_search_attributes(
            AddSearchAttributesRequest(
                namespace=client.namespace,
                search_attributes=dict.fromkeys(missing, IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD),
            )
        )
