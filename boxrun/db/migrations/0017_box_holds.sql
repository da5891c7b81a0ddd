-- Box holds (docs/pipelines-engine.md, "Box holds"): a pipeline step with `keep_box: true` keeps
-- the box its job ran on for the pipeline after that job ends, until every step naming it in
-- `same_box_as` has finished or the pipeline ends. A hold is exclusive like a `lock` lease, but
-- it belongs to the pipeline, not to a job: placement refuses every job on a held box except the
-- holding pipeline's jobs of the steps in `steps` (the holding step's own retries and the steps
-- pinned to it). It is taken in the same transaction that releases the step job's lease (so no
-- other job can be granted the box in between) and released by the pipeline's workflow, by the
-- pipeline's terminal state change, or by the reaper once the pipeline has ended.
CREATE TABLE box_holds (
    id           bigserial PRIMARY KEY,
    org_id       text NOT NULL REFERENCES orgs (id),
    box_id       bigint NOT NULL REFERENCES boxes (id) ON DELETE CASCADE,  -- a held box cannot be deleted (409)
    pipeline_id  uuid NOT NULL REFERENCES pipelines (id) ON DELETE CASCADE,
    step         text NOT NULL,                  -- the keep_box step (a concrete step name)
    steps        text[] NOT NULL,                -- the steps admitted on the held box: step + those pinned to it
    job_id       uuid,                           -- the step job whose lease end took the hold
    held_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    released_at  timestamptz,
    released_by  text                            -- 'pipeline', 'pipeline_ended', 'reaper'
);
-- one live hold per keep_box step; placement looks holds up by box
CREATE UNIQUE INDEX box_holds_live_step ON box_holds (pipeline_id, step) WHERE released_at IS NULL;
CREATE INDEX box_holds_live_box ON box_holds (box_id) WHERE released_at IS NULL;
