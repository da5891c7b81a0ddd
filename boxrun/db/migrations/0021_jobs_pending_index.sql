-- Jobs not yet placed (queued or waiting for a box), by org: what placement's FIFO check
-- (leases.sql box_facts, `behind`) reads for every candidate box, so it scans the jobs still
-- ahead instead of the whole table (which keeps every job ever run).
CREATE INDEX jobs_pending ON jobs (org_id, priority DESC, created_at, id) WHERE state IN ('queued', 'waiting_for_box');
