-- The audit triggers name their tables without a schema, and a session's temporary tables come
-- first in its search path: a role able to create one could shadow audit_log (or jobs, boxes)
-- and let a committed change leave its audit row in a throw-away table. Every audit function's
-- search path is pinned (pg_temp last), and TEMPORARY is taken from everyone but the owner.
ALTER FUNCTION audit_log_refuse() SET search_path = public, pg_temp;
ALTER FUNCTION audit_job_box(uuid) SET search_path = public, pg_temp;
ALTER FUNCTION audit_job_event() SET search_path = public, pg_temp;
ALTER FUNCTION audit_lease() SET search_path = public, pg_temp;
ALTER FUNCTION audit_placement_rejection() SET search_path = public, pg_temp;
ALTER FUNCTION audit_rerun() SET search_path = public, pg_temp;
DO $$
BEGIN
    EXECUTE format('REVOKE TEMPORARY ON DATABASE %I FROM PUBLIC', current_database());
END $$;
