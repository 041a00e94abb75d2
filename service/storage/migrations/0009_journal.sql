-- Records of the plant's durable journal (audit entries, alarm transitions, events, manual readings) that
-- are stored: each is applied in one transaction with its id here, so a replay after a crash stores it once.
CREATE TABLE journal_applied (
    id          uuid PRIMARY KEY,
    applied_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX journal_applied_at ON journal_applied (applied_at);
