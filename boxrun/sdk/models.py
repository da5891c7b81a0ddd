"""The models the SDK returns: the API's own pydantic schemas (boxrun.schemas)."""

from boxrun.constants import JobState, PipelineState, StepState
from boxrun.schemas import (
    ArtifactPublic,
    BoxCreated,
    BoxPublic,
    BoxQueuePublic,
    Health,
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
from boxrun.schemas.secrets import SecretPublic

__all__ = [
    "ArtifactPublic",
    "AttemptPublic",
    "AuditEntryPublic",
    "BoxCreated",
    "BoxPublic",
    "BoxQueuePublic",
    "Health",
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
    "PipelineEventPublic",
    "PipelinePublic",
    "PipelineState",
    "PipelineSummary",
    "SecretPublic",
    "StepState",
    "StepPublic",
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
