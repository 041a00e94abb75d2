"""/docs is useful: every operation's request body and 200 response carry an example."""

from __future__ import annotations

from typing import Any

from service.api.app import create_app
from service.api.state import ServiceState
from service.bus import SampleBus
from service.config import parse_config

CFG = parse_config({"devices": [{"id": "hp1", "protocol": "modbus", "endpoint": "127.0.0.1:5020", "points": [
    {"id": "supply_temperature", "unit": "degC", "address": 0, "function": "input"}]}]})


def _resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def _has_example(spec: dict[str, Any], content: dict[str, Any]) -> bool:
    """Every media type shows an example, on itself or on its (referenced) schema."""
    if not content:
        return False
    for media in content.values():
        schema = _resolve(spec, media.get("schema", {}))
        if not ("example" in media or media.get("examples") or schema.get("examples") or "example" in schema):
            return False
    return True


# Operations of modules written at the same time as this test (control, audit, accounting): their
# owners add examples and then delete the entries here. An entry that has gained its example fails
# the test, so this list can only shrink.
PENDING = {
    "GET /api/v1/energy: 200 response", "GET /api/v1/settlements: 200 response",
    "POST /api/v1/settlements/{contract_id}/{period}/close: 200 response",
    "POST /api/v1/settlements/{contract_id}/{period}/close: request body",
    "POST /api/v1/settlements/{contract_id}/{period}/correct: 200 response",
    "POST /api/v1/settlements/{contract_id}/{period}/correct: request body",
    "POST /api/v1/meters/{meter_id}/readings: request body",
    "POST /api/v1/meters/{meter_id}/replacements: request body",
    "GET /api/v1/kpis: 200 response", "GET /api/v1/reports/annual: 200 response",
}


def test_every_operation_has_request_and_response_examples() -> None:
    # The OpenAPI does not depend on the database; no pool is needed to generate it.
    spec = create_app(ServiceState(CFG, SampleBus(), None)).openapi()  # type: ignore[arg-type]
    missing = []
    operations = 0
    for path, item in spec["paths"].items():
        for method, op in item.items():
            operations += 1
            code, success = next(((c, r) for c, r in sorted(op["responses"].items()) if c.startswith("2")),
                                 ("200", {}))
            ok = success.get("content", {})
            if not _has_example(spec, ok):
                missing.append(f"{method.upper()} {path}: {code} response")
            body = op.get("requestBody")
            if body is not None and not _has_example(spec, body.get("content", {})):
                missing.append(f"{method.upper()} {path}: request body")
    assert operations >= 9
    unexpected = sorted(set(missing) - PENDING)
    assert not unexpected, "operations without examples:\n" + "\n".join(unexpected)
    done = sorted(PENDING - set(missing))
    assert not done, "these have examples now; delete them from PENDING:\n" + "\n".join(done)


def test_error_responses_have_examples() -> None:
    spec = create_app(ServiceState(CFG, SampleBus(), None)).openapi()  # type: ignore[arg-type]
    assert _resolve(spec, {"$ref": "#/components/schemas/ErrorOut"})["examples"]


def test_examples_are_valid_instances_of_their_models() -> None:
    from fastapi.routing import APIRoute
    from pydantic import BaseModel

    from service.api.deps import ErrorOut

    app = create_app(ServiceState(CFG, SampleBus(), None))  # type: ignore[arg-type]
    models: set[type[BaseModel]] = {ErrorOut}

    def api_routes(routes: list[Any]) -> list[APIRoute]:
        # Included routers may stay nested (FastAPI keeps the original router inside).
        out: list[APIRoute] = []
        for r in routes:
            if isinstance(r, APIRoute):
                out.append(r)
            else:
                out += api_routes(list(getattr(getattr(r, "original_router", None), "routes", [])))
        return out

    for route in api_routes(list(app.routes)):
        for model in (route.response_model, route.body_field.field_info.annotation if route.body_field else None):
            if isinstance(model, type) and issubclass(model, BaseModel):
                models.add(model)
    checked = 0
    for model in models:
        for example in model.model_json_schema().get("examples", []):
            model.model_validate(example)  # raises when an example drifts from its model
            checked += 1
    assert checked >= 8
