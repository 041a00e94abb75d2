-- The read-only database role Grafana's datasource logs in with (deploy/grafana/provisioning/datasources).
-- compose runs this file once, when the TimescaleDB volume is first initialised (the image's
-- /docker-entrypoint-initdb.d), as the database's owner heatrec and before heatrec's first migration. On a
-- volume initialised before, run it once by hand (docs/DEPLOY.md); it fails if the role exists already.
-- The password comes from the environment (psql 15's \getenv), never from this file.
\getenv grafana_password HEATREC_GRAFANA_DB_PASSWORD
CREATE ROLE grafana LOGIN PASSWORD :'grafana_password';
GRANT USAGE ON SCHEMA public TO grafana;
-- What exists now, and, through default privileges, every table and view heatrec's migrations create later.
GRANT SELECT ON ALL TABLES IN SCHEMA public TO grafana;
ALTER DEFAULT PRIVILEGES FOR ROLE heatrec IN SCHEMA public GRANT SELECT ON TABLES TO grafana;
