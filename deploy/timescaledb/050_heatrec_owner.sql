-- heatrec's own database role: it logs in, owns the database (and with it PostgreSQL 15's public schema) and runs
-- heatrec's migrations; it is no superuser and can make no roles or databases. compose runs this file once, when
-- the TimescaleDB volume is first initialised (the image's /docker-entrypoint-initdb.d), as the cluster's superuser
-- postgres (POSTGRES_USER: administration only, heatrec never logs in as it) in the database POSTGRES_DB, after
-- the image's own script has created the TimescaleDB extension there. On a volume initialised before, see
-- docs/DEPLOY.md ("A database from before the owner role"). The password comes from the environment (psql 15's
-- \getenv), never from this file.
\getenv heatrec_password HEATREC_DB_PASSWORD
SELECT current_database() AS dbname \gset
CREATE ROLE heatrec LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION PASSWORD :'heatrec_password';
ALTER DATABASE :"dbname" OWNER TO heatrec;
-- Only roles given CONNECT reach it: heatrec as its owner, grafana by 100_heatrec_grafana.sql.
REVOKE ALL ON DATABASE :"dbname" FROM PUBLIC;
-- The image's script made it already; it needs the superuser, so it is made here and not by heatrec's migration.
CREATE EXTENSION IF NOT EXISTS timescaledb;
