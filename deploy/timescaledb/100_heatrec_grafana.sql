-- The read-only database role Grafana's datasource logs in with (deploy/grafana/provisioning/datasources).
-- compose runs this file once, when the TimescaleDB volume is first initialised (the image's
-- /docker-entrypoint-initdb.d), as the cluster's superuser, after 050_heatrec_owner.sql and before heatrec's first
-- migration. On a volume initialised before, run it once by hand (docs/DEPLOY.md); it fails if the role exists
-- already. The password comes from the environment (psql 15's \getenv), never from this file.
\getenv grafana_password HEATREC_GRAFANA_DB_PASSWORD
SELECT current_database() AS dbname \gset
CREATE ROLE grafana LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION PASSWORD :'grafana_password';
-- Reading only, even by mistake: every transaction of its sessions is read-only.
ALTER ROLE grafana SET default_transaction_read_only = on;
GRANT CONNECT ON DATABASE :"dbname" TO grafana;
GRANT USAGE ON SCHEMA public TO grafana;
-- What exists now, and, through default privileges, every table and view heatrec's migrations create later.
GRANT SELECT ON ALL TABLES IN SCHEMA public TO grafana;
ALTER DEFAULT PRIVILEGES FOR ROLE heatrec IN SCHEMA public GRANT SELECT ON TABLES TO grafana;
-- But not the API tokens' hashes: heatrec's migration 0010 revokes them from every role but heatrec's, and a run
-- of this file after the migrations must not grant them again.
DO $$
BEGIN
    IF to_regclass('public.api_tokens') IS NOT NULL THEN
        REVOKE ALL ON TABLE public.api_tokens FROM grafana;
    END IF;
END
$$;
