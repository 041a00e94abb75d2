"""Query parameters shared by several endpoints."""

import re
from datetime import datetime, timedelta

from fastapi import HTTPException, Request

_NUMBER = re.compile(r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$")


def iso_times_only(request: Request, names: tuple[str, ...] = ("start", "end")) -> None:
    """Refuse epoch numbers for date-time query parameters: the schema says ISO 8601 (pydantic takes numbers)."""
    for name in names:
        value = request.query_params.get(name)
        if value is not None and _NUMBER.match(value):
            raise HTTPException(422, f"{name}: expected an ISO 8601 date-time such as 2024-03-01T00:00:00Z, "
                                     f"not {value!r}")


def within_span(request: Request, start: datetime, end: datetime, hint: str = "") -> None:
    """Refuse a start..end range longer than `[api] max_query_span_days` (422): its work grows with its length."""
    max_days: float = request.app.state.heatrec.config.api.max_query_span_days
    if end - start > timedelta(days=max_days):
        days = (end - start).total_seconds() / 86400
        raise HTTPException(422, f"the range {start.isoformat()} .. {end.isoformat()} spans {days:.0f} days: at "
                                 f"most {max_days:g} days can be asked at once ([api] max_query_span_days); ask "
                                 f"for shorter ranges one after another{hint}")


# PostgreSQL text cannot hold NUL: free text stored in the database says so in its schema (not a 422 later).
NO_NUL = r"^[^\x00]*$"
# No path or query parameter may hold a control character (service/api/guards.py refuses them): a parameter
# with a pattern of its own says so in it.
NO_CONTROL = r"^[^\x00-\x1f\x7f]*$"


def operation_ref(path: str, method: str = "post") -> str:
    """An OpenAPI operationRef (a JSON pointer to the operation), for links between operations."""
    return "#/paths/" + path.replace("~", "~0").replace("/", "~1") + "/" + method
