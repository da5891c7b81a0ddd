-- Box holds (migration 0017): a keep_box step's box kept for its pipeline after the step's job ended.

-- Take the hold of job $1's step on box $2 as the job's lease ends (called inside release(), in
-- the lease's transaction): only for a pipeline step with keep_box, while its pipeline has not
-- ended, and only if no other pipeline holds the box (two holds on one box would each refuse the
-- other's pinned steps; the later pipeline's pinned steps then wait like any job). Admitted on the
-- held box: the step itself (its retries) and the steps whose same_box_as names it. A second
-- attempt of the step finds its hold already there (ON CONFLICT): nothing changes.
-- name: take_hold
INSERT INTO box_holds (org_id, box_id, pipeline_id, step, steps, job_id)
SELECT j.org_id, $2, j.pipeline_id, j.step,
       ARRAY[j.step] || COALESCE(
           (SELECT array_agg(o.name ORDER BY o.position) FROM pipeline_steps o
            WHERE o.pipeline_id = j.pipeline_id AND o.spec->>'same_box_as' = j.step),
           ARRAY[]::text[]),
       j.id
FROM jobs j
JOIN pipeline_steps s ON s.pipeline_id = j.pipeline_id AND s.name = j.step
JOIN pipelines p ON p.id = j.pipeline_id
WHERE j.id = $1
  AND COALESCE((s.spec->>'keep_box')::boolean, false)
  AND p.state IN ('queued', 'running')
  AND NOT EXISTS (SELECT 1 FROM box_holds o WHERE o.box_id = $2 AND o.released_at IS NULL
                  AND o.pipeline_id <> j.pipeline_id)
ON CONFLICT (pipeline_id, step) WHERE released_at IS NULL DO NOTHING
RETURNING id;

-- Release the live holds of pipeline $1 (of its step $2 only, unless NULL); $3 says who.
-- name: release_holds
UPDATE box_holds SET released_at = clock_timestamp(), released_by = $3
WHERE pipeline_id = $1 AND ($2::text IS NULL OR step = $2) AND released_at IS NULL
RETURNING box_id, step;

-- The live hold of step $2 of pipeline $1: its box (a retry of the step stays on it).
-- name: step_hold_box
SELECT b.name FROM box_holds h JOIN boxes b ON b.id = h.box_id
WHERE h.pipeline_id = $1 AND h.step = $2 AND h.released_at IS NULL;

-- The box step $2 of pipeline $1 ran on: the box of its final (latest) attempt's job.
-- name: step_ran_on
SELECT b.name FROM pipeline_steps s JOIN jobs j ON j.id = s.job_id JOIN boxes b ON b.id = j.box_id
WHERE s.pipeline_id = $1 AND s.name = $2;

-- Live holds whose pipeline has ended (the reaper releases them: a crash between the pipeline's
-- end and the release, or a hold taken as the pipeline ended without its workflow).
-- name: holds_of_ended_pipelines
SELECT DISTINCT h.pipeline_id FROM box_holds h JOIN pipelines p ON p.id = h.pipeline_id
WHERE h.released_at IS NULL AND p.state NOT IN ('queued', 'running');

-- The live holds on box $1 (the queue view; box delete answers 409 while there is one).
-- name: box_live_holds
SELECT h.pipeline_id, h.step, h.steps, h.job_id, h.held_at FROM box_holds h
WHERE h.box_id = $1 AND h.released_at IS NULL ORDER BY h.held_at, h.id;
