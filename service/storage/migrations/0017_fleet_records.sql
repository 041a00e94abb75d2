-- The sites' alarm transitions, events and audit entries at the centre (docs/FLEET.md), additive. Each comes
-- in a record of the site's journal whose id (`origin`) is unique: a replayed batch, or a record the site
-- offered twice, stores nothing twice, whatever the batch numbering says.

ALTER TABLE fleet_sites ADD COLUMN records bigint NOT NULL DEFAULT 0;   -- journal records stored

-- Every record stored, by its journal id: a record that comes again (a replayed batch, or one the site
-- offered twice) is recognised here and stores nothing, as the site's journal_applied does for its database.
CREATE TABLE fleet_records (
    site       text NOT NULL REFERENCES fleet_sites (site),
    origin     uuid NOT NULL,
    kind       text NOT NULL,                     -- alarms, event, audit
    time       timestamptz NOT NULL,              -- when it happened at the site
    stored_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (site, origin)
);

-- A site's alarms as its newest record says (`updated`: when that happened at the site, so a record
-- committed late, out of order, never overwrites a newer state).
CREATE TABLE fleet_alarms (
    site          text NOT NULL REFERENCES fleet_sites (site),
    id            text NOT NULL,
    source        text NOT NULL,
    kind          text NOT NULL,
    severity      text NOT NULL,
    message       text NOT NULL,
    state         text NOT NULL,
    active        boolean NOT NULL,
    value         double precision,
    since         timestamptz,
    shelved_until timestamptz,
    acked_by      text,
    updated       timestamptz NOT NULL,
    PRIMARY KEY (site, id)
);

CREATE TABLE fleet_alarm_events (
    seq       bigserial PRIMARY KEY,              -- the cursor of the API's pages
    site      text NOT NULL REFERENCES fleet_sites (site),
    origin    uuid NOT NULL,                      -- the site's journal record
    n         integer NOT NULL,                   -- the transition's place in that record
    time      timestamptz NOT NULL,
    alarm_id  text NOT NULL,
    old_state text NOT NULL,
    new_state text NOT NULL,
    value     double precision,
    by_user   text,
    message   text NOT NULL,
    UNIQUE (site, origin, n)
);
CREATE INDEX fleet_alarm_events_site_time ON fleet_alarm_events (site, time DESC, seq DESC);

CREATE TABLE fleet_events (
    seq       bigserial PRIMARY KEY,
    site      text NOT NULL REFERENCES fleet_sites (site),
    origin    uuid NOT NULL,
    time      timestamptz NOT NULL,
    source    text NOT NULL,
    kind      text NOT NULL,
    severity  text NOT NULL,
    message   text NOT NULL,
    data      jsonb NOT NULL DEFAULT '{}',
    UNIQUE (site, origin)
);
CREATE INDEX fleet_events_site_time ON fleet_events (site, time DESC, seq DESC);

CREATE TABLE fleet_audit (
    seq        bigserial PRIMARY KEY,
    site       text NOT NULL REFERENCES fleet_sites (site),
    origin     uuid NOT NULL,
    time       timestamptz NOT NULL,
    principal  text NOT NULL,
    role       text NOT NULL,
    action     text NOT NULL,
    target     text NOT NULL,
    requested  jsonb,
    applied    jsonb,
    outcome    text NOT NULL,
    detail     text NOT NULL DEFAULT '',
    UNIQUE (site, origin)
);
CREATE INDEX fleet_audit_site_time ON fleet_audit (site, time DESC, seq DESC);
