"""/docs and /redoc work at a plant without internet: every asset comes from heatrec itself.

Debian's headless Chromium (installed by `make setup`) renders both pages from the real running service
with the internet made unreachable (every name but 127.0.0.1 unresolvable, every other address sent to a
dead proxy), and its network log shows what the page asked for. A control run of FastAPI's stock pages
under the same conditions shows that this harness does catch a CDN: they come out blank.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import json
import os
import shutil
import signal
import socket
import struct
import zlib
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from service.app import _ApiServer, bind_api_socket
from service.config import load_config
from service.localservers import free_port
from tests.support import running_service, wait_until

pytestmark = pytest.mark.integration  # uvicorn on loopback and headless chromium as a child process

CHROMIUM_TIMEOUT_S = 90
# Virtual time runs as fast as the page allows and waits for pending loads (the OpenAPI fetch), so the
# budget is generous without costing wall-clock time.
VIRTUAL_TIME_BUDGET_MS = 30_000
WINDOW = (1280, 2000)
# A rendered page has thousands of colours (text anti-aliasing, coloured method badges); a blank one has one.
MIN_COLOURS = 100
MIN_INK_SHARE = 0.02
CONTENT_TYPES = {".js": "javascript", ".css": "text/css", ".png": "image/png"}


class _References(HTMLParser):
    """Every src and href in a page."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [value for name, value in attrs if name in ("src", "href") and value is not None]


def references(page: str) -> list[str]:
    """The src and href attributes of an HTML page, in order."""
    parser = _References()
    parser.feed(page)
    return parser.urls


@dataclass
class Rendered:
    """What Chromium made of one page."""

    dom: str  # the document after its scripts ran
    screenshot: Path
    page_requests: list[str]  # every URL the page itself asked for (not the browser's own background traffic)


def _page_requests(net_log: Path, site: str) -> list[str]:
    """URLs of the requests in a Chromium net log that were made on behalf of a page from `site`."""
    log = json.loads(net_log.read_text())
    start_job = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    urls = []
    for event in log["events"]:
        params = event.get("params") or {}
        # The network isolation key names the top frame's site: the page's loads, wherever they go, carry
        # it; Chromium's own update, clock and account checks carry another one or none.
        if event["type"] == start_job and str(params.get("network_isolation_key", "")).split(" ")[0] == site:
            urls.append(params["url"])
    return urls


@contextlib.contextmanager
def _dead_proxy() -> Iterator[str]:
    """host:port of a bound socket that never listens: a proxy there refuses every connection."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{sock.getsockname()[1]}"


def chromium_command(url: str, workdir: Path, proxy: str) -> list[str]:
    """Headless Chromium that loads `url` with no way out of loopback, writing into a fresh `workdir`."""
    chromium = shutil.which("chromium")
    assert chromium, "chromium missing: run 'make setup' (it installs Debian's chromium package)"
    workdir.mkdir(parents=True)
    return [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            f"--user-data-dir={workdir / 'profile'}", "--no-first-run", "--disable-extensions",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            # Autofill asks Google about any page with a form (ReDoc's search box) on the page's behalf.
            "--disable-features=AutofillServerCommunication",
            # No way to the internet even on a machine that has one: names other than 127.0.0.1 do not
            # resolve, and anything not on loopback (which Chromium never proxies) goes to a dead proxy.
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1", f"--proxy-server=http://{proxy}",
            f"--log-net-log={workdir / 'netlog.json'}", f"--window-size={WINDOW[0]},{WINDOW[1]}",
            "--hide-scrollbars", f"--virtual-time-budget={VIRTUAL_TIME_BUDGET_MS}",
            f"--screenshot={workdir / 'page.png'}", "--dump-dom", url]


def rendered(url: str, workdir: Path, returncode: int | None, out: bytes, err: bytes) -> Rendered:
    """What a finished Chromium run of `url` left in `workdir`, or a failure that says why there is none."""
    tail = err.decode(errors="replace")[-2000:]
    assert returncode == 0, f"chromium exited {returncode} for {url}:\n{tail}"
    shot, net_log = workdir / "page.png", workdir / "netlog.json"
    assert shot.is_file() and net_log.is_file(), f"chromium wrote no screenshot or net log for {url}:\n{tail}"
    parts = urlsplit(url)
    return Rendered(out.decode(errors="replace"), shot, _page_requests(net_log, f"{parts.scheme}://{parts.hostname}"))


async def render(url: str, workdir: Path) -> Rendered:
    """Load `url` in headless Chromium with no way out of loopback; its DOM, screenshot and page requests."""
    with _dead_proxy() as proxy:
        # Asynchronous, so a service in this event loop keeps answering Chromium's requests.
        proc = await asyncio.create_subprocess_exec(*chromium_command(url, workdir, proxy),
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                                                    start_new_session=True)
        try:
            out, err = await asyncio.wait_for(proc.communicate(), CHROMIUM_TIMEOUT_S)
        except TimeoutError:
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: the renderer and zygote go with it
            await proc.wait()
            raise AssertionError(f"chromium did not finish {url} within {CHROMIUM_TIMEOUT_S} s") from None
    return rendered(url, workdir, proc.returncode, out, err)


def _unfilter(raw: bytes, width: int, height: int, bpp: int) -> list[bytes]:
    """The scanlines of 8-bit non-interlaced PNG image data, PNG filters undone (RFC 2083, 6)."""
    stride = width * bpp
    prev, rows = bytearray(stride), []
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1:start + 1 + stride])
        if kind == 1:  # Sub
            for i in range(bpp, stride):
                line[i] = (line[i] + line[i - bpp]) & 255
        elif kind == 2:  # Up
            line = bytearray((x + p) & 255 for x, p in zip(line, prev, strict=True))
        elif kind == 3:  # Average
            for i in range(stride):
                left = line[i - bpp] if i >= bpp else 0
                line[i] = (line[i] + ((left + prev[i]) >> 1)) & 255
        elif kind == 4:  # Paeth
            for i in range(stride):
                a, c = (line[i - bpp], prev[i - bpp]) if i >= bpp else (0, 0)
                b = prev[i]
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        else:
            assert kind == 0, f"PNG filter type {kind} at row {y}"
        rows.append(bytes(line))
        prev = line
    return rows


def png_rows(data: bytes) -> tuple[int, int, int, list[bytes]]:
    """(width, height, bytes per pixel, scanlines) of an 8-bit RGB or RGBA PNG, decoded with the stdlib."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, [], None
    while pos < len(data):
        (length,), kind = struct.unpack(">I", data[pos:pos + 4]), data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
    assert header is not None, "PNG without IHDR"
    width, height, depth, colour, _, _, interlace = header
    assert depth == 8 and colour in (2, 6) and interlace == 0, f"unexpected PNG format {header}"
    bpp = 3 if colour == 2 else 4
    return width, height, bpp, _unfilter(zlib.decompress(b"".join(idat)), width, height, bpp)


def ink(png: Path) -> tuple[int, float]:
    """(distinct colours, share of pixels not in the background colour) of a screenshot."""
    width, height, bpp, rows = png_rows(png.read_bytes())
    assert (width, height) == WINDOW, (width, height)
    counts = Counter(row[i:i + 3] for row in rows for i in range(0, len(row), bpp))  # RGB, alpha left out
    return len(counts), 1 - max(counts.values()) / (width * height)


async def check_page_is_offline(client: httpx.AsyncClient, path: str) -> str:
    """Fetch the HTML of `path`: only same-origin references, each served as JS, CSS or an icon; the HTML."""
    r = await client.get(path)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html"), (path, r.status_code)
    page = r.text
    # The browser is told to load nothing from elsewhere, whatever a bundle names (ReDoc's footer logo).
    csp = r.headers.get("content-security-policy", "")
    assert "default-src 'self'" in csp and "img-src 'self' data:" in csp, f"{path}: CSP {csp!r}"
    # Not only attributes: no absolute URL anywhere (inline script, a font link), so nothing can leave.
    for outside in ("http://", "https://", "fonts.googleapis", "cdn.jsdelivr"):
        assert outside not in page, f"{path} refers to {outside!r}:\n{page}"
    refs = references(page)
    assert len(refs) >= 2, f"{path} references no assets: {refs}"
    for ref in refs:
        assert ref.startswith("/") and not ref.startswith("//"), f"{path}: {ref!r} is not a same-origin path"
        asset = await client.get(urljoin(str(client.base_url), ref))
        kind = CONTENT_TYPES[Path(urlsplit(ref).path).suffix]
        assert asset.status_code == 200 and kind in asset.headers["content-type"] and asset.content, \
            (ref, asset.status_code, asset.headers.get("content-type"))
    return page


def operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(method, path, operation) of every operation in an OpenAPI document."""
    return [(method, path, op) for path, item in spec["paths"].items() for method, op in item.items()]


async def test_docs_and_redoc_render_offline_from_the_package(plant_config_file: Path, tmp_path: Path) -> None:
    cfg = load_config(plant_config_file)
    async with running_service(cfg) as svc:
        base = f"http://127.0.0.1:{svc.api_port}"
        async with httpx.AsyncClient(base_url=base, timeout=10) as client:
            spec = (await client.get("/openapi.json")).json()
            for path in ("/docs", "/redoc"):
                await check_page_is_offline(client, path)
            redirect = await client.get("/docs/oauth2-redirect")
            assert redirect.status_code == 200 and "swaggerUIRedirectOauth2" in redirect.text
        swagger = await render(f"{base}/docs", tmp_path / "docs")
        redoc = await render(f"{base}/redoc", tmp_path / "redoc")

    ops = operations(spec)
    assert ("get", "/api/v1/points") in {(m, p) for m, p, _ in ops}
    for name, page in (("/docs", swagger), ("/redoc", redoc)):
        outside = [u for u in page.page_requests if not u.startswith(base + "/")]
        assert not outside, f"{name} asked for URLs outside the service: {outside}"
        # The net log was read right: the page, its assets and the schema are in it.
        for want in (f"{base}{name}", f"{base}/openapi.json"):
            assert want in page.page_requests, f"{name}: {want} not in the page's requests {page.page_requests}"

    dom = html.unescape(swagger.dom)
    missing = [(m, p) for m, p, op in ops if f'data-path="{p}"' not in dom or op["summary"] not in dom]
    assert not missing, f"Swagger UI shows no block for {missing} (screenshot: {swagger.screenshot})"
    dom = html.unescape(redoc.dom)
    missing = [(m, p) for m, p, op in ops
               if f'operation/{op["operationId"]}"' not in dom or p not in dom or op["summary"] not in dom]
    assert not missing, f"ReDoc shows no section for {missing} (screenshot: {redoc.screenshot})"
    points = spec["paths"]["/api/v1/points"]["get"]
    assert points["description"].split(";")[0] in dom, "ReDoc lacks GET /api/v1/points' description"

    for name, page in (("/docs", swagger), ("/redoc", redoc)):
        colours, share = await asyncio.to_thread(ink, page.screenshot)
        assert colours >= MIN_COLOURS and share >= MIN_INK_SHARE, \
            f"{name} looks blank: {colours} colours, {share:.1%} ink ({page.screenshot})"


@contextlib.asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[str]:
    """`app` served by uvicorn on a free loopback port in this event loop; yields its base URL."""
    sock = bind_api_socket("127.0.0.1", free_port())
    server = _ApiServer(uvicorn.Config(app, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        await wait_until(lambda: server.started or task.done(), 30, "control API start")
        assert not task.done(), task.exception()
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 30)
        sock.close()


async def test_the_harness_sees_fastapis_cdn_pages_blank(tmp_path: Path) -> None:
    # The control: FastAPI's stock /docs and /redoc (the pages) under the same conditions. If these
    # rendered, the test above would prove nothing about being offline.
    async with serving(FastAPI(title="cdn")) as base:
        pages = {name: await render(f"{base}{name}", tmp_path / name.strip("/")) for name in ("/docs", "/redoc")}
    for name, page in pages.items():
        outside = [u for u in page.page_requests if not u.startswith(base + "/")]
        assert any("cdn.jsdelivr.net" in u for u in outside), (name, page.page_requests)
        colours, share = await asyncio.to_thread(ink, page.screenshot)
        assert colours < MIN_COLOURS and share < MIN_INK_SHARE, (name, colours, share)
    assert any("fonts.googleapis.com" in u for u in pages["/redoc"].page_requests), pages["/redoc"].page_requests
