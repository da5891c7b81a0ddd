-- The offer at submission (issue 15): when a box is free as a job is submitted, the API leases it
-- and offers the job in the submission itself, before the workflow exists; the workflow's run_job
-- then adopts the offer (its task token is written then). Until then the offer has no token, and
-- a result the box reports before the adoption is kept here for run_job to return.
ALTER TABLE dispatches ALTER COLUMN task_token DROP NOT NULL;
ALTER TABLE dispatches ADD COLUMN early_result jsonb;
