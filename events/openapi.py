"""drf-spectacular post-processing: the event request schema comes from the pydantic models.

The views document the request body with a placeholder serializer; here it is replaced by the
discriminated union the validator really enforces, so the schema (and schemathesis) see exactly
what the API accepts.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension

from events.schemas import event_json_schema

_PLACEHOLDERS = {"EventIn", "EventInRequest", "BatchEventIn", "BatchEventInRequest"}


def use_pydantic_event_schema(
    result: dict[str, Any], generator: Any, request: Any, public: bool
) -> dict[str, Any]:
    schemas = result.setdefault("components", {}).setdefault("schemas", {})
    event_schema, definitions = event_json_schema()
    for name in _PLACEHOLDERS & set(schemas):
        schemas[name] = event_schema
    schemas.update(definitions)
    for operations in result.get("paths", {}).values():
        for operation in operations.values():
            if isinstance(operation, dict) and "requestBody" in operation:
                operation["requestBody"]["required"] = True  # every body we accept is mandatory
    return result


class ApiKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    """Documents ApiKeyAuthentication: a Bearer token or the X-API-Key header (either one)."""

    target_class = "events.authentication.ApiKeyAuthentication"
    name = ["bearer", "apiKey"]

    def get_security_requirement(self, auto_schema: Any) -> list[dict[str, list[Any]]]:
        return [{"bearer": []}, {"apiKey": []}]  # alternatives: either header authenticates

    def get_security_definition(self, auto_schema: Any) -> list[dict[str, Any]]:
        return [
            {"type": "http", "scheme": "bearer"},
            {"type": "apiKey", "in": "header", "name": "X-API-Key"},
        ]
