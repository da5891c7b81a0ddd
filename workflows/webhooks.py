"""WebhookDeliveryWorkflow: one delivery, retried for up to a day; workflow id webhook-<delivery id>."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, TimeoutError

with workflow.unsafe.imports_passed_through():
    from boxrun.activities.webhooks import WebhookActivities
    from boxrun.constants import WEBHOOK_TASK_QUEUE
    from boxrun.messages import DeliveryInput, DeliveryResult, GiveUpInput
    from boxrun.temporal import BUG_TYPES

# One attempt: resolve + connect + send + answer is bounded by webhook_timeout_s (10 s by default,
# at most 60) inside the activity; the rest is two short Postgres writes.
ATTEMPT_TIMEOUT = timedelta(seconds=90)
# Non-2xx answers, timeouts, unreachable and refused targets are retried: 5 s, 10 s, 20 s, ... up to
# an hour apart, for a day in all (about 30 attempts). A deleted webhook is non-retryable.
DELIVERY_DEADLINE = timedelta(hours=24)
DELIVERY_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=5),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(hours=1),
    non_retryable_error_types=["WebhookGone", "SecretBoxError"],
)
# give_up_delivery: one short transaction, idempotent.
DB_STEP_TIMEOUT = timedelta(seconds=10)
DB_STEP_RETRY = RetryPolicy(initial_interval=timedelta(milliseconds=500), maximum_interval=timedelta(seconds=30))


@workflow.defn(name="WebhookDeliveryWorkflow", failure_exception_types=BUG_TYPES)
class WebhookDeliveryWorkflow:
    """Deliver once (at least once): the job or pipeline workflow that caused it never waits."""

    @workflow.run
    async def run(self, inp: DeliveryInput) -> DeliveryResult:
        try:
            return await workflow.execute_activity_method(
                WebhookActivities.deliver_webhook,
                inp,
                task_queue=WEBHOOK_TASK_QUEUE,
                start_to_close_timeout=ATTEMPT_TIMEOUT,
                schedule_to_close_timeout=DELIVERY_DEADLINE,
                retry_policy=DELIVERY_RETRY,
            )
        except ActivityError as exc:
            cause = exc.cause
            if isinstance(cause, ApplicationError) and cause.type == "WebhookGone":
                raise ApplicationError("the webhook was deleted", type="WebhookGone", non_retryable=True) from exc
            if isinstance(cause, TimeoutError):
                reason = "no successful attempt within 24 h"
            else:
                reason = cause.message if isinstance(cause, ApplicationError) else str(cause or exc)
            await workflow.execute_activity_method(
                WebhookActivities.give_up_delivery,
                GiveUpInput(delivery_id=inp.delivery_id, error=reason),
                start_to_close_timeout=DB_STEP_TIMEOUT,
                retry_policy=DB_STEP_RETRY,
            )
            raise ApplicationError(
                f"webhook delivery failed: {reason}", type="WebhookDeliveryFailed", non_retryable=True
            ) from exc
