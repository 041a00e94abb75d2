"""Query parameters shared by several endpoints."""

import re

from fastapi import HTTPException, Request

_NUMBER = re.compile(r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$")


def iso_times_only(request: Request, names: tuple[str, ...] = ("start", "end")) -> None:
    """Refuse epoch numbers for date-time query parameters: the schema says ISO 8601 (pydantic takes numbers)."""
    for name in names:
        value = request.query_params.get(name)
        if value is not None and _NUMBER.match(value):
            raise HTTPException(422, f"{name}: expected an ISO 8601 date-time such as 2024-03-01T00:00:00Z, "
                                     f"not {value!r}")


# PostgreSQL text cannot hold NUL: free text stored in the database says so in its schema (not a 422 later).
NO_NUL = r"^[^\x00]*$"


def operation_ref(path: str, method: str = "post") -> str:
    """An OpenAPI operationRef (a JSON pointer to the operation), for links between operations."""
    return "#/paths/" + path.replace("~", "~0").replace("/", "~1") + "/" + method
