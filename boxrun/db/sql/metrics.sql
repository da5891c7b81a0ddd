-- name: jobs_waiting_by_target
-- Jobs waiting for a box (GET /metrics, boxrun_jobs_waiting): per org and named box, and per org
-- and box group, the $1 busiest of each. Reads only the rows of the partial index jobs_waiting.
(SELECT org_id, 'box' AS kind, box_name AS name, count(*)::int AS n
   FROM jobs WHERE state = 'waiting_for_box' AND box_name IS NOT NULL
   GROUP BY org_id, box_name ORDER BY n DESC, org_id, box_name LIMIT $1)
UNION ALL
(SELECT org_id, 'group' AS kind, box_group AS name, count(*)::int AS n
   FROM jobs WHERE state = 'waiting_for_box' AND box_group IS NOT NULL
   GROUP BY org_id, box_group ORDER BY n DESC, org_id, box_group LIMIT $1);
