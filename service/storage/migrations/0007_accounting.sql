-- Heat accounting: manual register readings, recorded meter replacements, versioned settlements.

-- Register values typed in by an operator (a meter read on site while the gateway was down).
CREATE TABLE manual_readings (
    id          bigserial PRIMARY KEY,
    meter_id    text NOT NULL,
    time        timestamptz NOT NULL,
    value_gj    double precision NOT NULL CHECK (value_gj >= 0),
    entered_by  text NOT NULL,
    entered_at  timestamptz NOT NULL DEFAULT now(),
    note        text NOT NULL DEFAULT '',
    UNIQUE (meter_id, time)
);

-- A meter exchanged in the field: the old meter's last register and the new one's first. The serial
-- is not a telemetry point (the gateway sends it as text), so the exchange is recorded here.
CREATE TABLE meter_replacements (
    id             bigserial PRIMARY KEY,
    meter_id       text NOT NULL,
    time           timestamptz NOT NULL,
    old_serial     text NOT NULL DEFAULT '',
    new_serial     text NOT NULL,
    old_final_gj   double precision NOT NULL CHECK (old_final_gj >= 0),
    new_initial_gj double precision NOT NULL DEFAULT 0 CHECK (new_initial_gj >= 0),
    entered_by     text NOT NULL,
    entered_at     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (meter_id, time)
);

-- One row per contract, period and version. A closed version never changes; a correction is a new
-- version with a reason, and the latest version is the one in force.
CREATE TABLE settlements (
    id              bigserial PRIMARY KEY,
    contract_id     text NOT NULL,
    period          text NOT NULL,                -- YYYY-MM
    version         integer NOT NULL CHECK (version >= 1),
    period_start    timestamptz NOT NULL,
    period_end      timestamptz NOT NULL,
    status          text NOT NULL DEFAULT 'closed' CHECK (status IN ('closed')),
    delivered_gj    double precision NOT NULL,
    estimated_gj    double precision NOT NULL,
    charge_dkk      double precision NOT NULL,
    charge_payer    text NOT NULL,
    amount_dkk      double precision NOT NULL,
    allowed_price   double precision,
    provisional     boolean NOT NULL,
    document        jsonb NOT NULL,               -- the whole settlement as exported
    reason          text NOT NULL DEFAULT '',     -- why this version exists (required for corrections)
    closed_by       text NOT NULL,
    closed_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (contract_id, period, version),
    CHECK (version = 1 OR reason <> '')
);
CREATE INDEX settlements_period ON settlements (period, contract_id, version DESC);

CREATE FUNCTION settlements_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'settlement % of % version % is closed: corrections are new versions with a reason',
        OLD.period, OLD.contract_id, OLD.version USING ERRCODE = 'integrity_constraint_violation';
END $$;
CREATE FUNCTION settlements_immutable_stmt() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'settlements are immutable: corrections are new versions with a reason'
        USING ERRCODE = 'integrity_constraint_violation';
END $$;
CREATE TRIGGER settlements_no_update BEFORE UPDATE OR DELETE ON settlements
    FOR EACH ROW EXECUTE FUNCTION settlements_immutable();
CREATE TRIGGER settlements_no_truncate BEFORE TRUNCATE ON settlements
    FOR EACH STATEMENT EXECUTE FUNCTION settlements_immutable_stmt();

-- Hourly roll-up of billing registers (the SQL fast path of settlements). An hour's row holds the
-- energy of the register steps overlapping it, the faulty steps, the seconds covered, and how many
-- samples the point had in the hour when it was computed: samples are insert-only, so a changed
-- count (late readings replayed from the spool, or retention) shows the row is stale.
CREATE TABLE register_hours (
    point_key   integer NOT NULL,
    hour        timestamptz NOT NULL,
    energy      double precision NOT NULL,
    anomalies   integer NOT NULL,
    covered_s   double precision NOT NULL,
    samples     integer NOT NULL,
    computed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (point_key, hour)
);
