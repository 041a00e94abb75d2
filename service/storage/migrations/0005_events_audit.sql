-- Events (what happened to the service and its devices) and the audit log (who asked for what to be written).
CREATE TABLE events (
    seq       bigserial PRIMARY KEY,                -- orders events that share a timestamp
    time      timestamptz NOT NULL DEFAULT now(),
    source    text NOT NULL,                        -- e.g. driver:hp1, storage, control
    kind      text NOT NULL,                        -- e.g. connected, disconnected, spool_overflow
    severity  text NOT NULL DEFAULT 'info' CHECK (severity IN ('debug', 'info', 'warning', 'error')),
    message   text NOT NULL,
    data      jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX events_time ON events (time DESC);
CREATE INDEX events_source_time ON events (source, time DESC);

-- Append-only: every write request (operator API, SCADA, controllers), accepted or not.
CREATE TABLE audit_log (
    seq        bigserial PRIMARY KEY,
    time       timestamptz NOT NULL DEFAULT now(),
    principal  text NOT NULL,                       -- token name, SCADA user, or controller id
    role       text NOT NULL,                       -- viewer/operator/admin, or 'controller'
    action     text NOT NULL,                       -- e.g. setpoint, mode, acknowledge
    target     text NOT NULL DEFAULT '',            -- point id, alarm id, ...
    requested  jsonb,                               -- what was asked
    applied    jsonb,                               -- what was written after clamping (NULL if refused)
    outcome    text NOT NULL,                       -- accepted, clamped, refused, failed, read_back_mismatch
    detail     text NOT NULL DEFAULT ''
);
CREATE INDEX audit_log_time ON audit_log (time DESC);
CREATE INDEX audit_log_target_time ON audit_log (target, time DESC);
