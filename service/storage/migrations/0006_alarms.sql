-- Alarms: the live state of each alarm (survives restarts) and every state change.
CREATE TABLE alarms (
    id            text PRIMARY KEY,               -- e.g. hp1.supply_temperature:high, device:hp1:offline
    source        text NOT NULL,
    kind          text NOT NULL,
    severity      text NOT NULL,
    message       text NOT NULL,
    state         text NOT NULL,                  -- normal, unack_active, acked_active, rtn_unack, shelved
    active        boolean NOT NULL,
    value         double precision,
    since         timestamptz,
    shelved_until timestamptz,
    acked_by      text
);

CREATE TABLE alarm_events (
    seq       bigserial PRIMARY KEY,              -- orders events that share a timestamp
    time      timestamptz NOT NULL,
    alarm_id  text NOT NULL,
    old_state text NOT NULL,
    new_state text NOT NULL,
    value     double precision,
    by_user   text,                               -- operator for ack/shelve; NULL for condition changes
    message   text NOT NULL
);
CREATE INDEX alarm_events_time ON alarm_events (time DESC);
CREATE INDEX alarm_events_alarm ON alarm_events (alarm_id, time DESC);
