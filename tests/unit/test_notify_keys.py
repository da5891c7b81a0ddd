"""Followers are woken by NOTIFY payloads (text); a subscription must use the same text key."""

import uuid

from boxrun.api.live.listener import Notifier


def test_a_notification_wakes_subscribers_of_that_job_only():
    hub = Notifier()
    job = uuid.uuid4()
    mine, other = hub.subscribe(str(job)), hub.subscribe(str(uuid.uuid4()))
    hub._on_notify(None, 0, "boxrun_logs", str(job))
    assert mine.event.is_set() and not other.event.is_set()
