"""Schemas of outgoing webhooks, their deliveries and attempts (docs/webhooks.md)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from boxrun.schemas import CleanStr

WebhookEvent = Literal[
    "job.completed",
    "job.failed",
    "job.timed_out",
    "job.cancelled",
    "job.unschedulable",
    "box.offline",
    "box.online",
    "pipeline.completed",
    "pipeline.failed",
    "pipeline.cancelled",
    "pipeline.timed_out",
]
DeliveryState = Literal["pending", "delivered", "failed"]


class WebhookCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    url: CleanStr = Field(
        min_length=1,
        max_length=2048,
        description="http:// or https://, no user or password; private, loopback and link-local"
        " targets are refused unless the webhook_allow_networks setting allows them",
    )
    events: list[WebhookEvent] = Field(min_length=1, max_length=20, description="the events to deliver")

    @field_validator("events")
    @classmethod
    def _unique(cls, events: list[str]) -> list[str]:
        if len(set(events)) != len(events):
            raise ValueError("an event is listed twice")
        return events


class WebhookPublic(BaseModel):
    id: str
    url: str
    events: list[str]
    created_by: str
    created_at: datetime


class WebhookCreated(WebhookPublic):
    """POST /api/webhooks answer: the only time the signing secret is shown."""

    secret: str = Field(description="whsec_...: the key of X-Boxrun-Signature's HMAC; shown once")


class WebhooksPublic(BaseModel):
    data: list[WebhookPublic]


class WebhookAttemptPublic(BaseModel):
    at: datetime
    status_code: int | None = Field(description="the receiver's HTTP status; null: no answer (see error)")
    error: str | None
    duration_ms: int
    response: str | None = Field(description="at most 1 KiB of the answer's body, as text")


class WebhookDeliveryPublic(BaseModel):
    id: str = Field(description="X-Boxrun-Delivery: the same on every attempt and redelivery")
    event: str
    subject: str = Field(description="the job or pipeline id, or the box name")
    state: DeliveryState
    created_at: datetime
    finished_at: datetime | None
    error: str | None = Field(description="why the delivery ended failed")
    attempts: list[WebhookAttemptPublic]


class WebhookDeliveriesPublic(BaseModel):
    data: list[WebhookDeliveryPublic]
    next_cursor: str | None = Field(description="pass as ?cursor= for the next (older) page; null: no more")
