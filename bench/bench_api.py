"""GET /api/v1/points latency under concurrent load: heatrec's API against a bare FastAPI endpoint.

Run: .venv/bin/python bench/bench_api.py [--points 200] [--connections 32] [--duration 8] [--rounds 2]
Starts its own PostgreSQL (tokens live there) and two uvicorn servers on loopback, each in a
process of its own with the same settings (one worker, no access log): heatrec's real API (bearer
token checked against the database, pydantic response models, the latency-histogram middleware)
with `--points` points that all hold a sample, and a bare FastAPI app whose one endpoint returns the
same JSON document (same size) without authentication. The load is `wrk` (Debian package wrk) with
`--connections` keep-alive connections, or, without wrk, as many concurrent httpx clients; the two
servers are measured alternately, `--rounds` times each, and the median round is reported.
Target: heatrec p99 <= 1.5 x bare p99.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from service.config import DatabaseConfig, HeatrecConfig, parse_config
from service.localservers import PostgresCluster, free_port

PATH = "/api/v1/points"


def plant(points: int) -> HeatrecConfig:
    """A plant of Modbus devices with 40 points each, `points` in all."""
    devices = []
    for d in range(0, points, 40):
        pts = [{"id": f"p{i}", "unit": "degC", "address": i, "function": "input", "scale": 0.1}
               for i in range(min(40, points - d))]
        devices.append({"id": f"dev{d // 40}", "protocol": "modbus", "endpoint": "127.0.0.1:5020", "points": pts})
    return parse_config({"devices": devices})


# ---------------------------------------------------------------------------------- servers


def serve_heatrec(port: int, points: int, db: DatabaseConfig) -> None:
    """heatrec's API as the service builds it, every point with a latest sample."""
    import uvicorn

    from service.api.app import create_app
    from service.api.state import ServiceState
    from service.app import Service
    from service.metrics import build_registry
    from service.model import Quality, Sample
    from service.storage.database import connect_pool

    cfg = plant(points)

    async def main() -> None:
        svc = Service(cfg)  # not run: only its bus and metrics, as the API sees them
        t = datetime.now(UTC)
        for i, pid in enumerate(cfg.point_ids()):
            svc.bus.publish(Sample(pid, 20.0 + i * 0.1, Quality.GOOD, t, t))
        registry, latency = build_registry(svc)
        pool = await connect_pool(db)
        app = create_app(ServiceState(cfg, svc.bus, pool, svc.health, registry, latency))
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                               access_log=False, lifespan="off"))
        await server.serve()

    asyncio.run(main())


def serve_bare(port: int, body_file: Path) -> None:
    """The baseline: FastAPI returning the same document, no authentication, no response model."""
    import uvicorn
    from fastapi import FastAPI

    doc = json.loads(body_file.read_text())
    app = FastAPI()

    @app.get(PATH)
    async def points() -> Any:
        return doc

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False, lifespan="off")


# ---------------------------------------------------------------------------------- load


_UNIT = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


def load_wrk(url: str, headers: dict[str, str], connections: int, duration: float) -> dict[str, float]:
    """p50/p99 (seconds) and requests/s as wrk measures them."""
    cmd = ["wrk", "-t2", f"-c{connections}", f"-d{duration:.0f}s", "--latency", "--timeout", "5s"]
    for k, v in headers.items():
        cmd += ["-H", f"{k}: {v}"]
    out = subprocess.run([*cmd, url], capture_output=True, text=True, check=True, timeout=duration + 30).stdout
    pct = {m[0]: float(m[1]) * _UNIT[m[2]] for m in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.M)}
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        raise SystemExit(f"{url}: {non2xx.group(1)} failed requests\n{out}")
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    return {"p50": pct["50"], "p99": pct["99"], "rps": rps, "requests": requests}


def load_httpx(url: str, headers: dict[str, str], connections: int, duration: float) -> dict[str, float]:
    """The same with concurrent httpx clients (each on its own connection), timed per request."""
    import httpx

    async def run() -> dict[str, float]:
        lat: list[float] = []
        stop = time.perf_counter() + duration

        async def client() -> None:
            async with httpx.AsyncClient(headers=headers, timeout=5) as c:
                while time.perf_counter() < stop:
                    t0 = time.perf_counter()
                    r = await c.get(url)
                    lat.append(time.perf_counter() - t0)
                    if r.status_code != 200:
                        raise SystemExit(f"{url}: HTTP {r.status_code}")

        t0 = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(connections)))
        elapsed = time.perf_counter() - t0
        q = statistics.quantiles(lat, n=100)
        return {"p50": q[49], "p99": q[98], "rps": len(lat) / elapsed, "requests": len(lat)}

    return asyncio.run(run())


# ---------------------------------------------------------------------------------- driver


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """Until the server accepts connections (or fail when it died)."""
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server on port {port} exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit(f"server on port {port} did not start")


async def prepare(db: DatabaseConfig) -> str:
    """Schema and a viewer token."""
    from service.auth import create_token
    from service.storage.database import connect_pool
    from service.storage.migrations import migrate

    pool = await connect_pool(db)
    async with pool.acquire() as conn:
        await migrate(conn)
        token = await create_token(conn, "viewer", "bench")
    await pool.close()
    return token


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=200, help="points in the plant (default %(default)s)")
    ap.add_argument("--connections", type=int, default=32, help="concurrent clients (default %(default)s)")
    ap.add_argument("--duration", type=float, default=8, help="seconds per round and side (default %(default)s)")
    ap.add_argument("--rounds", type=int, default=2, help="rounds per side (default %(default)s)")
    ap.add_argument("--load", choices=("auto", "wrk", "httpx"), default="auto")
    ap.add_argument("--serve", choices=("heatrec", "bare"), help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--body-file", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.serve == "heatrec":
        db = DatabaseConfig(**json.loads(os.environ["HEATREC_BENCH_DB"]))
        serve_heatrec(args.port, args.points, db)
        return
    if args.serve == "bare":
        serve_bare(args.port, args.body_file)
        return

    use_wrk = args.load == "wrk" or (args.load == "auto" and shutil.which("wrk") is not None)
    load = load_wrk if use_wrk else load_httpx
    root = Path(tempfile.mkdtemp(prefix="heatrec-bench-api-"))
    os.chmod(root, 0o755)
    pg = PostgresCluster(root / "pg", free_port(), secrets.token_urlsafe(12))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        pg.start()
        db = DatabaseConfig(host=pg.host, port=pg.port, name=pg.dbname, user=pg.user, password=pg.password)
        token = asyncio.run(prepare(db))
        me = [sys.executable, str(Path(__file__).resolve())]
        hport, bport = free_port(), free_port()
        env = {**os.environ, "HEATREC_BENCH_DB": db.model_dump_json()}
        procs.append(subprocess.Popen([*me, "--serve", "heatrec", "--port", str(hport), "--points", str(args.points)],
                                      env=env))
        wait_listening(hport, procs[-1])
        import httpx

        auth = {"Authorization": f"Bearer {token}"}
        body = httpx.get(f"http://127.0.0.1:{hport}{PATH}", headers=auth, timeout=10)
        body.raise_for_status()
        body_file = root / "points.json"
        body_file.write_bytes(body.content)
        procs.append(subprocess.Popen([*me, "--serve", "bare", "--port", str(bport), "--body-file", str(body_file)]))
        wait_listening(bport, procs[-1])
        bare_size = len(httpx.get(f"http://127.0.0.1:{bport}{PATH}", timeout=10).content)

        sides = {"bare": (f"http://127.0.0.1:{bport}{PATH}", {}, procs[1].pid),
                 "heatrec": (f"http://127.0.0.1:{hport}{PATH}", auth, procs[0].pid)}
        results: dict[str, list[dict[str, float]]] = {"bare": [], "heatrec": []}
        for url, headers, _pid in sides.values():  # warm-up: imports, first connections, pool
            load(url, headers, args.connections, 1)
        for _ in range(args.rounds):
            for side, (url, headers, pid) in sides.items():
                cpu0 = cpu_seconds(pid)
                r = load(url, headers, args.connections, args.duration)
                # Server CPU per request: much steadier than latency on a machine shared with other work.
                r["cpu_per_request"] = (cpu_seconds(pid) - cpu0) / r["requests"]
                results[side].append(r)
    finally:
        for p in procs:
            p.terminate()
            p.wait(10)
        pg.stop()
        shutil.rmtree(root, ignore_errors=True)

    def median(side: str, key: str) -> float:
        return statistics.median(r[key] for r in results[side])

    print(f"GET {PATH}: {args.points} points, {len(body.content)} bytes (bare {bare_size} bytes), "
          f"{args.connections} connections, {args.rounds} x {args.duration:.0f} s per side, "
          f"load: {'wrk' if use_wrk else 'httpx'}, tokens from the local store")
    print(f"{'side':8} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>8} {'server CPU us/req':>18}")
    for side in ("bare", "heatrec"):
        print(f"{side:8} {median(side, 'p50') * 1e3:8.2f} {median(side, 'p99') * 1e3:8.2f} {median(side, 'rps'):8.0f} "
              f"{median(side, 'cpu_per_request') * 1e6:18.0f}")
    print(f"ratio heatrec/bare: p50 {median('heatrec', 'p50') / median('bare', 'p50'):.2f}, "
          f"p99 {median('heatrec', 'p99') / median('bare', 'p99'):.2f} (target <= 1.5), "
          f"throughput {median('heatrec', 'rps') / median('bare', 'rps'):.2f}, "
          f"server CPU per request {median('heatrec', 'cpu_per_request') / median('bare', 'cpu_per_request'):.2f}")


if __name__ == "__main__":
    main()
