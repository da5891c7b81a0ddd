"""The models the SDK returns: the API's own pydantic schemas (boxrun.schemas)."""

from boxrun.constants import JobState, PipelineState, StepState
from boxrun.schemas import (
    ArtifactPublic,
    BoxCreated,
    BoxPublic,
    BoxQueuePublic,
    Health,
    HoldPublic,
    JobEventPublic,
    JobPublic,
    LogLinePublic,
    MaintenancePublic,
)
from boxrun.schemas.audit import AuditEntryPublic, JobSpecPublic
from boxrun.schemas.org import OrgQuotaPublic, OrgRetentionPublic, OrgUsage
from boxrun.schemas.people import MePublic, TokenCreated, TokenPublic, UserCreated, UserPublic
from boxrun.schemas.pipelines import (
    AttemptPublic,
    PipelineEventPublic,
    PipelinePublic,
    PipelineSummary,
    StepPublic,
)
from boxrun.schemas.schedules import SchedulePublic
from boxrun.schemas.secrets import SecretPublic
from boxrun.schemas.templates import ParamSpec, TemplatePublic

__all__ = [
    "ArtifactPublic",
    "AttemptPublic",
    "AuditEntryPublic",
    "BoxCreated",
    "BoxPublic",
    "BoxQueuePublic",
    "Health",
    "HoldPublic",
    "JobEventPublic",
    "JobPublic",
    "JobSpecPublic",
    "JobState",
    "LogLinePublic",
    "MaintenancePublic",
    "MePublic",
    "OrgQuotaPublic",
    "OrgRetentionPublic",
    "OrgUsage",
    "ParamSpec",
    "PipelineEventPublic",
    "PipelinePublic",
    "PipelineState",
    "PipelineSummary",
    "SchedulePublic",
    "SecretPublic",
    "StepState",
    "StepPublic",
    "TemplatePublic",
    "TokenCreated",
    "TokenPublic",
    "UserCreated",
    "UserPublic",
]

# webhooks (docs/webhooks.md)
from boxrun.schemas.webhooks import (
    WebhookAttemptPublic,
    WebhookCreated,
    WebhookDeliveryPublic,
    WebhookPublic,
)

__all__ += ["WebhookAttemptPublic", "WebhookCreated", "WebhookDeliveryPublic", "WebhookPublic"]
