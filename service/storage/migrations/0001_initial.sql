-- heatrec schema, version 1: point metadata, the samples hypertable, the readings view, API tokens.
CREATE EXTENSION IF NOT EXISTS timescaledb;

CREATE TABLE points (
    key         serial PRIMARY KEY,
    id          text NOT NULL UNIQUE,            -- device.point, e.g. hp1.supply_temperature
    device      text NOT NULL,
    unit        text NOT NULL DEFAULT '',
    kind        text NOT NULL DEFAULT 'measurement',
    writable    boolean NOT NULL DEFAULT false,
    min         double precision,
    max         double precision,
    description text NOT NULL DEFAULT '',
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Integer point keys keep the hypertable narrow; the readings view puts the text id back.
CREATE TABLE samples (
    time      timestamptz NOT NULL,              -- source timestamp of the reading
    point_key integer NOT NULL,
    value     double precision,                  -- NULL when the reading failed (quality BAD/STALE)
    quality   smallint NOT NULL                  -- 0 GOOD, 1 UNCERTAIN, 2 BAD, 3 STALE
);
SELECT create_hypertable('samples', 'time', chunk_time_interval => INTERVAL '1 day');
-- One reading per point and source time: makes re-delivery and backfill idempotent and serves
-- history queries by point and time range.
CREATE UNIQUE INDEX samples_point_time ON samples (point_key, time DESC);

CREATE TABLE quality_names (quality smallint PRIMARY KEY, name text NOT NULL UNIQUE);
INSERT INTO quality_names VALUES (0, 'GOOD'), (1, 'UNCERTAIN'), (2, 'BAD'), (3, 'STALE');

-- The stable surface for users' own SQL and Grafana queries.
CREATE VIEW readings AS
    SELECT s.time, p.id AS point, s.value, q.name AS quality
    FROM samples s
    JOIN points p ON p.key = s.point_key
    JOIN quality_names q ON q.quality = s.quality;

CREATE TABLE api_tokens (
    id          serial PRIMARY KEY,
    name        text NOT NULL,
    role        text NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
    token_hash  text NOT NULL UNIQUE,            -- sha256 of the token; the token itself is never stored
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);
