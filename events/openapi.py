"""drf-spectacular post-processing: the event request schema comes from the pydantic models.

The views document the request body with a placeholder serializer; here it is replaced by the
discriminated union the validator really enforces, so the schema (and schemathesis) see exactly
what the API accepts.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings

from events.schemas import event_json_schema

_NO_NUL = "^[^\\u0000]*$"
_EVENT_ID_PATH = "^(?!batch$)[A-Za-z0-9][A-Za-z0-9._:-]*$"
_PLACEHOLDERS = {"EventIn", "EventInRequest", "BatchEventIn", "BatchEventInRequest"}


def use_pydantic_event_schema(
    result: dict[str, Any], generator: Any, request: Any, public: bool
) -> dict[str, Any]:
    schemas = result.setdefault("components", {}).setdefault("schemas", {})
    event_schema, definitions = event_json_schema()
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
