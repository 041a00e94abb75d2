"""Keyset pagination shared by list endpoints: `limit` (at most MAX_LIMIT) and a `cursor`.

A cursor names the last item of the previous page rather than an offset, so items that arrive
while a client pages (new alarm events land at the top) neither repeat nor get skipped. Clients
treat it as opaque and pass `next_cursor` back unchanged, or simply follow `next`.
"""

from __future__ import annotations

from fastapi import Request
from pydantic import BaseModel, Field

MAX_LIMIT = 1000
LIMIT_HELP = f"items per page, at most {MAX_LIMIT}"
CURSOR_HELP = "`next_cursor` of the previous page (leave out for the first page)"


class Page(BaseModel):
    """Where the next page starts; both null on the last page."""

    next_cursor: str | None = Field(default=None, description="pass as `cursor` to get the next page")
    next: str | None = Field(default=None, description="relative URL of the next page, same filters and limit")


def page_links(request: Request, cursor: str | None) -> dict[str, str | None]:
    """The next-page fields: the cursor and the request's own URL with `cursor` replaced."""
    if cursor is None:
        return {"next_cursor": None, "next": None}
    query = request.url.include_query_params(cursor=cursor).query
    return {"next_cursor": cursor, "next": f"{request.url.path}?{query}"}
