"""The request id from the API through Temporal: a header on every workflow it starts, carried by
the workflow to its activities and child workflows, and the log context of each (job_id, box, org,
request_id) set where they run. The shape of temporalio/samples-python's context_propagation.

The API's client adds the header (and a memo, `request_id`, which the Temporal UI shows); the
control worker, connected with the same interceptor, reads it in workflows and activities.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from temporalio import activity, client, workflow
from temporalio.api.common.v1 import Payload
from temporalio.worker import (
    ActivityInboundInterceptor,
    ExecuteActivityInput,
    ExecuteWorkflowInput,
    Interceptor,
    StartActivityInput,
    StartChildWorkflowInput,
    StartLocalActivityInput,
    WorkflowInboundInterceptor,
    WorkflowInterceptorClassInput,
    WorkflowOutboundInterceptor,
)

from boxrun import logcontext

log = logging.getLogger(__name__)

HEADER = "boxrun-request-id"
MEMO = "request_id"
# workflows whose id is their job's id
_JOB_WORKFLOWS = frozenset({"JobWorkflow"})


def _payload(request_id: str) -> Payload:
    return Payload(metadata={"encoding": b"binary/plain"}, data=request_id.encode())


def request_id_of(headers: Any) -> str | None:
    """The request id a header map carries, if a tame one."""
    payload = headers.get(HEADER) if headers else None
    if payload is None:
        return None
    try:
        text: str = payload.data.decode()
    except UnicodeDecodeError:
        return None
    return text if logcontext.request_id_from(text) == text else None


def _with_header(headers: Any, request_id: str | None) -> Any:
    if request_id is None or HEADER in (headers or {}):
        return headers
    return {**(headers or {}), HEADER: _payload(request_id)}


class _ClientOutbound(client.OutboundInterceptor):
    async def start_workflow(self, input: client.StartWorkflowInput) -> client.WorkflowHandle[Any, Any]:
        request_id = logcontext.get("request_id")
        if request_id is not None:
            input.headers = _with_header(input.headers, request_id)
            input.memo = {**(input.memo or {}), MEMO: request_id}
        return await super().start_workflow(input)


class _WorkflowOutbound(WorkflowOutboundInterceptor):
    def __init__(self, next: WorkflowOutboundInterceptor, request_id: str | None) -> None:
        super().__init__(next)
        self.request_id = request_id

    def start_activity(self, input: StartActivityInput) -> workflow.ActivityHandle[Any]:
        input.headers = _with_header(input.headers, self.request_id)
        return super().start_activity(input)

    def start_local_activity(self, input: StartLocalActivityInput) -> workflow.ActivityHandle[Any]:
        input.headers = _with_header(input.headers, self.request_id)
        return super().start_local_activity(input)

    async def start_child_workflow(self, input: StartChildWorkflowInput) -> workflow.ChildWorkflowHandle[Any, Any]:
        input.headers = _with_header(input.headers, self.request_id)
        return await super().start_child_workflow(input)


class _WorkflowInbound(WorkflowInboundInterceptor):
    """Keeps the workflow's request id for its outbound calls and binds the log context of
    `workflow.logger` lines written in the run (no I/O: deterministic)."""

    def init(self, outbound: WorkflowOutboundInterceptor) -> None:
        self._outbound = _WorkflowOutbound(outbound, None)
        super().init(self._outbound)

    async def execute_workflow(self, input: ExecuteWorkflowInput) -> Any:
        request_id = self._outbound.request_id = request_id_of(input.headers)
        info = workflow.info()
        job_id = info.workflow_id if info.workflow_type in _JOB_WORKFLOWS else None
        with logcontext.bound(request_id=request_id, job_id=job_id):
            return await super().execute_workflow(input)


def _arg_fields(args: Any) -> dict[str, str | None]:
    """job_id, box and org an activity's input names (its first argument's attributes)."""
    first = args[0] if args else None
    fields: dict[str, str | None] = {}
    for name, attrs in (("job_id", ("job_id",)), ("box", ("box", "box_name")), ("org", ("org_id", "org"))):
        for attr in attrs:
            value = getattr(first, attr, None)
            if isinstance(value, str) and value:
                fields[name] = value
                break
    return fields


class _ActivityInbound(ActivityInboundInterceptor):
    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        info = activity.info()
        fields = _arg_fields(input.args)
        if "job_id" not in fields and info.workflow_type in _JOB_WORKFLOWS:
            fields["job_id"] = info.workflow_id
        with logcontext.bound(request_id=request_id_of(input.headers), **fields):
            began = time.perf_counter()
            outcome = "failed"
            try:
                result = await super().execute_activity(input)
                outcome = "done"
                return result
            finally:
                took_ms = (time.perf_counter() - began) * 1000
                log.debug("activity %s (attempt %d) %s in %.1f ms", info.activity_type, info.attempt, outcome, took_ms)


class RequestIdPropagation(client.Interceptor, Interceptor):
    """Give it to the client (boxrun.temporal.connect(interceptors=...)): the client adds the
    header, and a worker on that client carries it through workflows to activities."""

    def intercept_client(self, next: client.OutboundInterceptor) -> client.OutboundInterceptor:
        return _ClientOutbound(next)

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _ActivityInbound(next)

    def workflow_interceptor_class(self, input: WorkflowInterceptorClassInput) -> type[WorkflowInboundInterceptor]:
        return _WorkflowInbound
