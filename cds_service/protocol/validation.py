"""Request decoding and validation at the HTTP boundary: JSON, nesting depth, JSON Schema, hook semantics.

Every problem becomes a :class:`cds_service.errors.BadRequest` whose message names the JSON path,
so that an integration engineer can fix the request without reading our code.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import cache
from importlib import resources
from typing import Any

import orjson
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from cds_service.errors import BadRequest


def decode_json(raw: bytes, *, max_depth: int) -> Any:
    """Parse a request body; raise BadRequest for invalid JSON or nesting deeper than ``max_depth``."""
    if not raw.strip():
        raise BadRequest("the request body is empty; a JSON object is required")
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        # orjson also refuses invalid UTF-8 and nesting beyond its own hard limit (1024) here.
        raise BadRequest(f"the request body is not valid JSON: {exc}") from None
    check_depth(value, max_depth)
    return value


def check_depth(value: Any, max_depth: int) -> None:
    """Refuse documents nested deeper than ``max_depth`` (iterative: a hostile body cannot exhaust the stack)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > max_depth:
            raise BadRequest(f"the request body is nested deeper than {max_depth} levels")
        if isinstance(node, dict):
            stack.extend((child, depth + 1) for child in node.values() if isinstance(child, dict | list))
        elif isinstance(node, list):
            stack.extend((child, depth + 1) for child in node if isinstance(child, dict | list))


@cache
def schema_validator(name: str) -> Draft202012Validator:
    """A compiled validator for ``cds_service/schemas/<name>.schema.json`` (built once per process)."""
    text = resources.files("cds_service.schemas").joinpath(f"{name}.schema.json").read_text(encoding="utf-8")
    schema = json.loads(text)
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def json_path(error: ValidationError) -> str:
    parts: list[str] = []
    for item in error.absolute_path:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        else:
            parts.append(f".{item}" if parts else str(item))
    return "".join(parts) or "(root)"


def validate_against(name: str, document: Any) -> None:
    """Validate with a packaged schema; raise BadRequest naming the path of the most relevant error."""
    validator = schema_validator(name)
    errors = list(validator.iter_errors(document))
    if not errors:
        return
    # The error on the deepest path is the most specific one to report.
    error = max(errors, key=lambda e: (len(e.absolute_path), -len(e.context or ())))
    message = error.message
    if len(message) > 300:
        message = message[:300] + "..."
    raise BadRequest(f"{json_path(error)}: {message}", expression=json_path(error))


def validate_hook_request(body: Any, *, service_id: str, expected_hook: str) -> Mapping[str, Any]:
    """Check a service call's body: schema, the hook of this service, selections that point into draftOrders."""
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    validate_against("request", body)
    if body["hook"] != expected_hook:
        raise BadRequest(
            f"hook: {body['hook']!r} does not match service {service_id!r}, which answers {expected_hook!r}",
            expression="hook",
        )
    context = body["context"]
    if expected_hook == "order-sign" and "selections" in context:
        # order-sign has no selections; tolerate them (some clients send them) but they change nothing.
        pass
    selections = context.get("selections")
    if selections:
        drafts = {
            f"{entry['resource']['resourceType']}/{entry['resource'].get('id')}"
            for entry in context["draftOrders"].get("entry", [])
        }
        for index, reference in enumerate(selections):
            if reference not in drafts:
                raise BadRequest(
                    f"context.selections[{index}]: {reference!r} is not an order in context.draftOrders",
                    expression=f"context.selections[{index}]",
                )
    return body
