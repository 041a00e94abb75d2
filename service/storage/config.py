"""[database] and [storage]: where the samples go, how they are batched, spooled and kept."""

from __future__ import annotations

from pydantic import Field

from service.schema import StrictModel


class DatabaseConfig(StrictModel):
    """PostgreSQL + TimescaleDB connection."""

    host: str = "127.0.0.1"
    port: int = Field(default=5432, gt=0, lt=65536)
    name: str = "heatrec"
    user: str = "heatrec"
    password: str | None = None
    connect_timeout_s: float = Field(default=5.0, gt=0)

    def dsn(self) -> str:
        """libpq-style URL for asyncpg (password passed separately)."""
        return f"postgresql://{self.user}@{self.host}:{self.port}/{self.name}"


class StorageConfig(StrictModel):
    """Batching of the sample writer, its store-and-forward spool, and retention."""

    batch_size: int = Field(default=5000, ge=1, le=100_000, description="samples per COPY batch at most")
    batch_max_age_s: float = Field(default=1.0, gt=0, le=60,
                                   description="a batch is written at the latest this long after its first sample")
    queue_size: int = Field(default=200_000, ge=1000,
                            description="samples held in memory for the writer; beyond it they are dropped, counted")
    max_in_flight: int = Field(default=2, ge=1, le=8,
                               description="batches being written at once (the next is built while one is in flight)")
    write_timeout_s: float = Field(default=10.0, gt=0, le=600,
                                   description="a batch write slower than this counts as failed and goes to the spool")
    retry_max_s: float = Field(default=10.0, gt=0, le=600,
                               description="longest wait between attempts to reach a database that is away")
    spool_dir: str = Field(default="var/spool",
                           description="directory of the store-and-forward spool (the default is relative to the "
                                       "working directory; a path written in the file, to the file)")
    spool_max_bytes: int = Field(default=1 << 30, ge=4096,
                                 description="spool size bound; beyond it the oldest segment is deleted and counted")
    spool_segment_bytes: int = Field(default=16 << 20, ge=1024,
                                     description="size at which the spool starts a new segment file")
    spool_above_queue: float = Field(default=0.5, gt=0, le=1,
                                     description="fraction of queue_size above which batches go to the spool "
                                                 "even while the database answers (it is behind)")
    retention_days: float | None = Field(default=None, gt=0,
                                         description="drop sample chunks older than this; unset keeps everything")
    retention_interval_s: float = Field(default=3600.0, gt=0,
                                        description="how often the retention task runs")
    compress_after_days: float | None = Field(default=7.0, gt=0,
                                              description="compress chunks older than this when the TimescaleDB "
                                                          "edition offers compression; unset never compresses")
