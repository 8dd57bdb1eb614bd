-- 0020: the role a pull request's plan reads the database as: SELECT on server_ownership, and
-- nothing else (docs/gitops-pipeline.md, "The read-only role").
-- The plan (`citrus-deploy gitops plan` without --preview) reads only that view
-- (store.ownership.load_deployed). The view runs with its owner's rights, so the role reads the
-- columns the view has (no agent key, no config of the service) and no table at all: a
-- pull request's workflow that sends its URL elsewhere gives away who manages which server and
-- what was applied, never a key.
-- The role cannot log in: an operator makes a login role for the pipeline and grants this one
-- to it (GRANT citrus_gitops_plan TO citrus_plan_ci), so its password is theirs to rotate.
-- Roles belong to the cluster, not the database: made once, kept if it exists. A migrating user
-- that may not create roles (no CREATEROLE) leaves it to an administrator, with a notice, rather
-- than stopping the service's upgrade; docs/gitops-pipeline.md gives the statements to run then.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'citrus_gitops_plan') THEN
        IF NOT (SELECT rolcreaterole OR rolsuper FROM pg_roles WHERE rolname = current_user) THEN
            RAISE NOTICE 'role citrus_gitops_plan not made: % may not create roles', current_user;
            RETURN;
        END IF;
        CREATE ROLE citrus_gitops_plan NOLOGIN;
    END IF;
    -- No table is granted (and PUBLIC has none on tables): only the view.
    GRANT USAGE ON SCHEMA public TO citrus_gitops_plan;
    GRANT SELECT ON server_ownership TO citrus_gitops_plan;
END
$$;
