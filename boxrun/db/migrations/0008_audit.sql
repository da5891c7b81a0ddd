-- The audit trail: append-only, and written by the database itself for what no code path may
-- forget (every job transition, lease granted and released, maintenance rejection, rerun).
--
-- Append-only twice over: this trigger refuses UPDATE, DELETE and TRUNCATE to everyone, the
-- owner included; and `migrate(conn, runtime_role=...)` grants the role the API and the worker
-- use no UPDATE, DELETE or TRUNCATE on the table, so that role (not the owner) can neither
-- change rows nor drop the trigger. A later migration that must rewrite audit rows disables the
-- trigger inside its own transaction (ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only).
--
-- The recording triggers run in the writer's transaction: a transition that rolls back leaves
-- no audit row, one that commits always has one. They are plain (not SECURITY DEFINER)
-- functions: the runtime role may INSERT into audit_log, which is all they do.

CREATE FUNCTION audit_log_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only (% refused)', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END $$;

CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_refuse();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_refuse();

CREATE INDEX audit_log_action ON audit_log (org_id, action, id);

-- The box a job is on (or was on, or named), as GET /api/jobs shows it.
CREATE FUNCTION audit_job_box(p_job uuid) RETURNS text LANGUAGE sql STABLE AS $$
    SELECT COALESCE(b.name, j.deleted_box_name, j.box_name)
    FROM jobs j LEFT JOIN boxes b ON b.id = j.box_id
    WHERE j.id = p_job
$$;

-- Every job_events row: action job.<to_state>. The actor is detail.actor if the writer named
-- one, the owner for the submission (the first event), else `system` (the control plane).
CREATE FUNCTION audit_job_event() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO audit_log (org_id, actor, action, job_id, box, detail, at)
    VALUES (
        NEW.org_id,
        COALESCE(NEW.detail ->> 'actor',
                 CASE WHEN NEW.from_state IS NULL THEN NEW.detail ->> 'owner' END,
                 'system'),
        'job.' || NEW.to_state::text,
        NEW.job_id,
        COALESCE(NEW.detail ->> 'box', audit_job_box(NEW.job_id)),
        jsonb_build_object('from', NEW.from_state::text, 'to', NEW.to_state::text) || NEW.detail,
        NEW.at
    );
    RETURN NULL;
END $$;

CREATE TRIGGER job_events_audit AFTER INSERT ON job_events
    FOR EACH ROW EXECUTE FUNCTION audit_job_event();

-- Leases: granted on insert, released when released_at is first set.
CREATE FUNCTION audit_lease() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO audit_log (org_id, actor, action, job_id, box, detail, at)
        VALUES (NEW.org_id, 'system', 'lease.granted', NEW.job_id,
                (SELECT name FROM boxes WHERE id = NEW.box_id),
                jsonb_build_object('exclusive', NEW.exclusive), NEW.acquired_at);
    ELSE
        INSERT INTO audit_log (org_id, actor, action, job_id, box, detail, at)
        VALUES (NEW.org_id, 'system', 'lease.released', NEW.job_id,
                (SELECT name FROM boxes WHERE id = NEW.box_id),
                jsonb_build_object('exclusive', NEW.exclusive, 'acquired_at', NEW.acquired_at),
                NEW.released_at);
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER leases_audit_granted AFTER INSERT ON leases
    FOR EACH ROW EXECUTE FUNCTION audit_lease();
CREATE TRIGGER leases_audit_released AFTER UPDATE OF released_at ON leases
    FOR EACH ROW WHEN (OLD.released_at IS NULL AND NEW.released_at IS NOT NULL)
    EXECUTE FUNCTION audit_lease();

-- Placement passed over a box because of a maintenance window (recorded once per job and window).
CREATE FUNCTION audit_placement_rejection() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO audit_log (org_id, actor, action, job_id, box, detail, at)
    SELECT NEW.org_id, 'system', 'placement.rejected_maintenance', NEW.job_id, b.name,
           jsonb_build_object('window', jsonb_build_object(
               'id', w.id, 'starts_at', w.starts_at, 'ends_at', w.ends_at, 'reason', w.reason,
               'created_by', w.created_by)),
           NEW.at
    FROM boxes b, maintenance_windows w
    WHERE b.id = NEW.box_id AND w.id = NEW.window_id;
    RETURN NULL;
END $$;

CREATE TRIGGER placement_rejections_audit AFTER INSERT ON placement_rejections
    FOR EACH ROW EXECUTE FUNCTION audit_placement_rejection();

-- A rerun: the new job belongs to who reran it; the row names the original job.
CREATE FUNCTION audit_rerun() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO audit_log (org_id, actor, action, job_id, box, detail)
    VALUES (NEW.org_id, NEW.owner, 'job.rerun', NEW.rerun_of, NEW.box_name,
            jsonb_build_object('new_job_id', NEW.id));
    RETURN NULL;
END $$;

CREATE TRIGGER jobs_audit_rerun AFTER INSERT ON jobs
    FOR EACH ROW WHEN (NEW.rerun_of IS NOT NULL) EXECUTE FUNCTION audit_rerun();
