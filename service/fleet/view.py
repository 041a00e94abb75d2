"""What the centre knows of each site, for its API and metrics: the database's figures and the live link state.

The figures of record (watermark, batches, backlog as the site's batches report it) come from the database,
so every instance of a group shows the same; the link state comes from the site's retained status topic and
its will, which every instance subscribes to; the counters of malformed and refused messages are this
instance's own.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

from service.fleet.store import SiteRow
from service.model import utcnow

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SiteView:
    """One site as `GET /api/v1/fleet/sites` shows it."""

    site: str
    name: str
    link: str                      # online, offline (its will), stale (no status for link_timeout_s), unknown
    lag_s: float | None            # now minus the site-side creation time of the newest batch committed
    last_acked_batch: int          # the watermark: every batch up to it is committed and acknowledged
    epoch: int
    batches: int
    samples: int
    replayed_batches: int
    lost_batches: int
    backlog_samples: int           # what the site held unacknowledged, as it reported
    backlog_batches: int
    last_commit_at: datetime | None
    status_at: datetime | None


@dataclass
class _Link:
    online: bool
    at: float                      # monotonic time of the last status
    wall: datetime
    doc: dict[str, object]


@dataclass
class FleetState:
    """The centre's live view; the consumer feeds it, the API and metrics read it."""

    names: dict[str, str] = field(default_factory=dict)      # configured sites (empty: any)
    restrict: bool = False
    link_timeout_s: float = 30.0
    rows: dict[str, SiteRow] = field(default_factory=dict)
    links: dict[str, _Link] = field(default_factory=dict)
    counts: Counter[tuple[str, str]] = field(default_factory=Counter)   # (site, outcome) -> batches
    stored_samples: Counter[str] = field(default_factory=Counter)
    _logged: set[tuple[str, str]] = field(default_factory=set)

    def allowed(self, site: str) -> bool:
        """Whether batches of this site are taken in."""
        return not self.restrict or site in self.names

    def count(self, site: str, outcome: str, detail: str = "") -> None:
        """Count a batch's outcome; the first of each kind per site is logged, the rest only counted."""
        self.counts[(site, outcome)] += 1
        if outcome in ("stored",) or (site, outcome) in self._logged:
            return
        self._logged.add((site, outcome))
        level = logging.INFO if outcome == "replayed" else logging.WARNING
        log.log(level, "site %s: %s batch%s (further ones are only counted: heatrec_fleet_batches_total)",
                site, outcome, f": {detail}" if detail else "")

    def status(self, site: str, doc: dict[str, object]) -> None:
        """A site's status (or its will) arrived."""
        self.links[site] = _Link(bool(doc.get("online")), time.monotonic(), utcnow(), doc)

    def views(self) -> list[SiteView]:
        """Every site configured or heard of, by id."""
        now, mono = utcnow(), time.monotonic()
        out = []
        for site in sorted(set(self.names) | set(self.rows) | (set(self.links) if not self.restrict else set())):
            row, link = self.rows.get(site), self.links.get(site)
            if link is None:
                state = "unknown"
            elif not link.online:
                state = "offline"
            else:
                state = "online" if mono - link.at <= self.link_timeout_s else "stale"
            lag = None
            if row is not None and row.last_batch_created is not None:
                lag = max(0.0, (now - row.last_batch_created).total_seconds())
            out.append(SiteView(
                site, self.names.get(site, ""), state, lag, row.watermark if row else 0, row.epoch if row else 0,
                row.batches if row else 0, row.samples if row else 0, row.replayed_batches if row else 0,
                row.lost_batches if row else 0, row.backlog_samples if row else 0, row.backlog_batches if row else 0,
                row.last_commit_at if row else None, link.wall if link else None))
        return out
