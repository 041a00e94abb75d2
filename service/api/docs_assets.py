"""Swagger UI (/docs) and ReDoc (/redoc) served from assets installed with heatrec, never from a CDN.

FastAPI's own pages load their JavaScript and CSS from jsdelivr (and ReDoc's fonts from Google), so at
a plant without internet they stay blank. The pinned `fastapi-offline` dependency ships the same
Swagger UI and ReDoc bundles as package data; only those files are used here, mounted same-origin.
"""

from __future__ import annotations

import importlib.util

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS_PACKAGE = "fastapi_offline"
STATIC_URL = "/docs/static"
# No badge from validator.swagger.io (the only other outside address Swagger UI would use).
_SWAGGER_PARAMETERS = {"validatorUrl": None}
# The bundles still name outside addresses (ReDoc's footer logo on cdn.redoc.ly): the browser is told to load
# nothing but this origin. Inline script and style are the pages' own (FastAPI's HTML, styled-components);
# data: images are Swagger UI's icons, blob: workers ReDoc's search.
CONTENT_SECURITY_POLICY = ("default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
                           "img-src 'self' data:; font-src 'self' data:; worker-src 'self' blob:; "
                           "connect-src 'self'; frame-ancestors 'self'")


def _assets() -> StaticFiles:
    if importlib.util.find_spec(ASSETS_PACKAGE) is None:
        raise RuntimeError(f"the package {ASSETS_PACKAGE!r} that carries /docs' and /redoc's JavaScript is not "
                           "installed: run 'make setup' or 'pip install .'")
    return StaticFiles(packages=[(ASSETS_PACKAGE, "static")])


def add_docs_routes(app: FastAPI, docs_url: str = "/docs", redoc_url: str = "/redoc") -> None:
    """Serve Swagger UI at `docs_url` and ReDoc at `redoc_url`, both with same-origin assets only.

    The app must be created with docs_url=None and redoc_url=None so FastAPI's CDN pages stay away.
    """
    openapi_url = app.openapi_url
    if openapi_url is None:
        raise ValueError("the docs pages need the OpenAPI schema: create the app with an openapi_url")
    oauth2_redirect_url = app.swagger_ui_oauth2_redirect_url
    app.mount(STATIC_URL, _assets(), name="docs-static")

    def same_origin(page: HTMLResponse) -> HTMLResponse:
        page.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
        return page

    def root(request: Request) -> str:
        # Behind a proxy that strips a prefix every URL in the page must carry it, as FastAPI does.
        return str(request.scope.get("root_path", "")).rstrip("/")

    @app.get(docs_url, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        prefix = root(request)
        return same_origin(get_swagger_ui_html(
            openapi_url=prefix + openapi_url, title=f"{app.title} - Swagger UI",
            oauth2_redirect_url=prefix + oauth2_redirect_url if oauth2_redirect_url else None,
            init_oauth=app.swagger_ui_init_oauth,
            swagger_js_url=f"{prefix}{STATIC_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{prefix}{STATIC_URL}/swagger-ui.css",
            swagger_favicon_url=f"{prefix}{STATIC_URL}/favicon.png",
            swagger_ui_parameters={**_SWAGGER_PARAMETERS, **(app.swagger_ui_parameters or {})}))

    if oauth2_redirect_url:
        @app.get(oauth2_redirect_url, include_in_schema=False)
        async def swagger_ui_oauth2_redirect() -> HTMLResponse:
            return get_swagger_ui_oauth2_redirect_html()

    @app.get(redoc_url, include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        prefix = root(request)
        return same_origin(get_redoc_html(
            openapi_url=prefix + openapi_url, title=f"{app.title} - ReDoc",
            redoc_js_url=f"{prefix}{STATIC_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{prefix}{STATIC_URL}/favicon.png", with_google_fonts=False))
