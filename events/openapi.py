"""drf-spectacular post-processing: the event request schema comes from the pydantic models.

The views document the request body with a placeholder serializer; here it is replaced by the
discriminated union the validator really enforces, so the schema (and schemathesis) see exactly
what the API accepts.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings

from events.schemas import MAX_PROPERTY_DEPTH, event_json_schema

_NO_NUL = "^[^\\u0000]*$"
_EVENT_ID_PATH = "^(?!batch$)[A-Za-z0-9][A-Za-z0-9._:-]*$"
_PLACEHOLDERS = {"EventIn", "EventInRequest", "BatchEventIn", "BatchEventInRequest"}
# Any JSON value without a NUL in a string or key and at most MAX_PROPERTY_DEPTH levels deep with
# its `properties` object: what the API stores (events/schemas.py refuses the rest; PostgreSQL
# cannot hold U+0000). One definition per remaining level, since a recursive one has no depth.
_STORABLE_JSON = "StorableJsonDepth{}"


def _storable_json_ref(levels: int) -> dict[str, str]:
    return {"$ref": "#/components/schemas/" + _STORABLE_JSON.format(levels)}


def _storable_json_schemas() -> dict[str, Any]:
    schemas: dict[str, Any] = {}
    for levels in range(MAX_PROPERTY_DEPTH):
        options: list[dict[str, Any]] = [
            {"type": "string", "pattern": _NO_NUL},
            {"type": "number"},
            {"type": "boolean"},
            {"type": "null"},
        ]
        if levels:
            options += [
                {"type": "array", "items": _storable_json_ref(levels - 1)},
                {
                    "type": "object",
                    "propertyNames": {"pattern": _NO_NUL},
                    "additionalProperties": _storable_json_ref(levels - 1),
                },
            ]
        schemas[_STORABLE_JSON.format(levels)] = {"anyOf": options}
    return schemas


def _document_storable_text(schema: Any) -> None:
    """Say in the schema what validation refuses: NUL in free text and in free-form properties."""
    if isinstance(schema, list):
        for item in schema:
            _document_storable_text(item)
        return
    if not isinstance(schema, dict):
        return
    if schema.get("type") == "string" and not {"pattern", "format", "enum", "const"} & set(schema):
        schema["pattern"] = _NO_NUL
    if schema.get("type") == "object" and schema.get("additionalProperties") is True:
        # The free-form `properties` object is the first level; its values may nest 4 more.
        schema["additionalProperties"] = _storable_json_ref(MAX_PROPERTY_DEPTH - 1)
        schema["propertyNames"] = {"pattern": _NO_NUL}
    for value in schema.values():
        _document_storable_text(value)


def use_pydantic_event_schema(
    result: dict[str, Any], generator: Any, request: Any, public: bool
) -> dict[str, Any]:
    schemas = result.setdefault("components", {}).setdefault("schemas", {})
    event_schema, definitions = event_json_schema()
    _document_storable_text([event_schema, definitions])
    schemas.update(_storable_json_schemas())
    for name in _PLACEHOLDERS & set(schemas):
        schemas[name] = event_schema
    schemas.update(definitions)
    schemas["EventBatchRequest"] = {
        "type": "object",
        "required": ["events"],
        "additionalProperties": False,
        "properties": {
            "events": {
                "type": "array",
                "minItems": 1,
                "maxItems": settings.MAX_BATCH_EVENTS,
                "items": event_schema,
            }
        },
    }
    detail = result.get("paths", {}).get("/api/events/{event_id}", {}).get("get")
    for parameter in detail.get("parameters", []) if detail else []:
        if parameter.get("name") == "event_id":
            # /api/events/batch is the batch endpoint (POST only), so "batch" is never an id here.
            parameter["schema"] = {"type": "string", "pattern": _EVENT_ID_PATH, "maxLength": 64}
    batch = result.get("paths", {}).get("/api/events/batch", {}).get("post")
    if batch is not None:
        batch["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/EventBatchRequest"}}},
        }
    for operations in result.get("paths", {}).values():
        for operation in operations.values():
            if not isinstance(operation, dict):
                continue
            if "requestBody" in operation:
                operation["requestBody"]["required"] = True  # every body we accept is mandatory
            for parameter in operation.get("parameters", []):
                schema = parameter.get("schema", {})
                if schema.get("type") == "string" and not {"pattern", "format", "enum"} & set(schema):
                    schema["pattern"] = _NO_NUL  # DRF refuses NUL characters in every text field
    return result
