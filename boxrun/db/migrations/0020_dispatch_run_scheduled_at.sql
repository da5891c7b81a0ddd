-- When the run_job activity that wrote the offer was scheduled. A job whose run_job was lost
-- with a control worker before its box claimed it is offered again by a new run_job
-- (docs/architecture.md, "A control worker lost before the claim"); a late write of the old,
-- timed-out activity (a worker that was paused, not dead) must not take the offer back, so an
-- offer only replaces one scheduled before it.
ALTER TABLE dispatches ADD COLUMN run_scheduled_at timestamptz;
