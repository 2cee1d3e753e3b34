"""The OpenAPI 3.1 description of the HTTP execute API against the handlers: every path and
method it documents is routed, every routed execute-API path and method is documented, the
documented request fields are exactly the fields the handlers accept, every reference
resolves, and the gateway serves the document without a token."""

from __future__ import annotations

import json
import re

from tornado import web

from kernel_gateway_ext.handlers import agentcube, execute, health, openapi
from kernel_gateway_ext.handlers.openapi import openapi_document

METHODS = ("get", "put", "post", "delete", "patch")
PENDING: set[tuple[str, str]] = set()  # documented operations not routed yet: none
EXECUTE_API = execute.default_handlers + openapi.default_handlers
ALL_ROUTES = health.default_handlers + agentcube.default_handlers + EXECUTE_API


def spec() -> dict:
    return json.loads(openapi_document())


def sample(path: str) -> str:
    """A concrete URL for a templated path."""
    return re.sub(r"\{(\w+)\}", lambda m: "dir/file.txt" if m.group(1) == "path" else "abc-123", path)


def handled(handler: type, method: str) -> bool:
    return getattr(handler, method) is not getattr(web.RequestHandler, method)


def route_of(url: str, routes) -> type | None:
    return next((handler for pattern, handler, *_ in routes if re.fullmatch(pattern, url)), None)


def documented() -> set[tuple[str, str]]:
    return {(path, method) for path, item in spec()["paths"].items() for method in METHODS if method in item}


def test_every_documented_operation_is_routed():
    unrouted = {(path, method) for path, method in documented()
                if not ((handler := route_of(sample(path), ALL_ROUTES)) and handled(handler, method))}
    assert unrouted <= PENDING, f"documented but not routed: {sorted(unrouted - PENDING)}"


def test_every_routed_execute_api_operation_is_documented():
    by_url = {sample(path): path for path in spec()["paths"]}
    for pattern, handler, *_ in EXECUTE_API:
        paths = [path for url, path in by_url.items() if re.fullmatch(pattern, url)]
        assert paths, f"route {pattern} is not in openapi.json"
        for method in METHODS:
            if handled(handler, method):
                assert any((path, method) in documented() for path in paths), f"{method.upper()} {pattern}"


def test_documented_request_fields_are_the_accepted_fields():
    schemas = spec()["components"]["schemas"]
    assert list(schemas["ExecuteRequest"]["properties"]) == list(execute.EXECUTE_FIELDS)
    assert list(schemas["SessionCreate"]["properties"]) == list(execute.SESSION_FIELDS)
    assert schemas["ExecuteRequest"]["additionalProperties"] is False
    assert schemas["SessionCreate"]["additionalProperties"] is False


def test_document_is_openapi_3_1_and_references_resolve():
    document = spec()
    assert document["openapi"].startswith("3.1.")
    text = json.dumps(document)
    for name in re.findall(r'"#/components/schemas/(\w+)"', text):
        assert name in document["components"]["schemas"], name


async def test_served_without_a_token(jp_fetch, gateway):
    response = await jp_fetch("v1", "openapi.json", headers={"Authorization": ""})
    assert response.code == 200 and response.headers["Content-Type"] == "application/json"
    assert json.loads(response.body) == spec()
