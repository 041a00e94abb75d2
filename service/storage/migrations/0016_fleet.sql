-- The site dimension (docs/FLEET.md), additive: a plant's own points stay in `points` and read as site 'local';
-- a central store keeps each site's points in `fleet_points`, whose keys come from the same sequence, so
-- `samples` and its unique (point_key, time) index hold every site's readings exactly once per (site, point, time).

CREATE TABLE fleet_sites (
    site               text PRIMARY KEY,
    epoch              bigint NOT NULL DEFAULT 0,     -- the site's outbox generation; a new one restarts its sequence
    watermark          bigint NOT NULL DEFAULT 0,     -- every batch 1..watermark of the epoch is committed
    batches            bigint NOT NULL DEFAULT 0,     -- batches committed
    samples            bigint NOT NULL DEFAULT 0,     -- samples committed
    replayed_batches   bigint NOT NULL DEFAULT 0,     -- batches that arrived again and were not stored again
    lost_batches       bigint NOT NULL DEFAULT 0,     -- batches the site reported lost (its outbox overflowed)
    last_batch_seq     bigint,
    last_batch_created timestamptz,                   -- site-side creation time of the newest committed batch
    last_commit_at     timestamptz,
    backlog_samples    bigint NOT NULL DEFAULT 0,     -- what the site held unacknowledged, as its last batch said
    backlog_batches    bigint NOT NULL DEFAULT 0
);

CREATE TABLE fleet_points (
    key  integer PRIMARY KEY DEFAULT nextval('points_key_seq'),
    site text NOT NULL REFERENCES fleet_sites (site),
    id   text NOT NULL,                               -- the point's id at its site, device.point
    UNIQUE (site, id)
);

-- Batches committed above the watermark (they arrived out of order); rows at or below it are deleted.
CREATE TABLE fleet_batches (
    site     text NOT NULL REFERENCES fleet_sites (site),
    seq      bigint NOT NULL,
    samples  integer NOT NULL,
    PRIMARY KEY (site, seq)
);

-- Existing queries keep working: the same columns first, `site` added at the end.
CREATE OR REPLACE VIEW readings AS
    SELECT s.time, p.id AS point, s.value, q.name AS quality, p.site
    FROM samples s
    JOIN (SELECT key, id, 'local'::text AS site FROM points
          UNION ALL
          SELECT key, id, site FROM fleet_points) p ON p.key = s.point_key
    JOIN quality_names q ON q.quality = s.quality;
