-- Boxes can be deleted (PATCH/DELETE /api/boxes/{name}); job history outlives them.
--
-- A deleted box's row goes (hard delete, not a deleted_at flag): every query that reads `boxes`
-- (placement, the node-token lookup, listings, the agent routes) then sees it gone without a
-- filter that each one, and every future one, would have to remember; its node token dies with
-- it and its name is free to register again. What must outlive it is kept elsewhere:
-- - jobs placed on it keep the name it had in `deleted_box_name` (written by the delete, in the
--   same transaction) and their `box_id` becomes NULL; GET /api/jobs shows
--   COALESCE(box's name, deleted_box_name, box_name);
-- - job_events keep {"box": name} in their detail; the audit log keeps `box.delete`;
-- - released leases, maintenance windows and placement rejections of the box go with it (a
--   delete is refused with 409 while a lease on it is active).
ALTER TABLE jobs ADD COLUMN deleted_box_name text;

ALTER TABLE jobs DROP CONSTRAINT jobs_box_id_fkey;
ALTER TABLE jobs ADD CONSTRAINT jobs_box_id_fkey FOREIGN KEY (box_id) REFERENCES boxes (id) ON DELETE SET NULL;

ALTER TABLE leases DROP CONSTRAINT leases_box_id_fkey;
ALTER TABLE leases ADD CONSTRAINT leases_box_id_fkey FOREIGN KEY (box_id) REFERENCES boxes (id) ON DELETE CASCADE;
