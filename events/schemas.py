"""The event catalog (docs/api.md, "Events") as pydantic models: the API's validator on the hot path.

pydantic validates a 500-event body in about a millisecond where DRF serializers take ~17 ms
(docs/benchmarks.md), and still reports field paths (`properties.amount`).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Union

import orjson
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    create_model,
    field_validator,
)

from cloudscale_project.errors import ErrorDetail
from cloudscale_project.timeutil import parse_iso

MAX_PROPERTY_KEYS = 64
MAX_PROPERTY_DEPTH = 5
# PostgreSQL's text and jsonb cannot hold U+0000, so an event carrying it could never be stored:
# it is refused here, with its field path, instead of failing every write of its batch.
NUL = "\x00"
_NUL_MESSAGE = "must not contain the NUL character (U+0000)"
_NUL_SHOWN = "\\u0000"  # how a NUL inside a key is written in a field path

EVENT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]*$"
EVENT_ID_MAX_LENGTH = 64
USER_ID_MAX_LENGTH = 128
EventId = Annotated[
    str, StringConstraints(min_length=1, max_length=EVENT_ID_MAX_LENGTH, pattern=EVENT_ID_PATTERN)
]
NonEmpty = Annotated[str, StringConstraints(min_length=1, max_length=512)]
Currency = Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")]


class _Properties(BaseModel):
    """Required properties of a type; any other keys are kept as sent."""

    model_config = ConfigDict(extra="allow", strict=True)


class PageViewProperties(_Properties):
    url: Annotated[str, StringConstraints(min_length=1, max_length=2048)]


class SearchProperties(_Properties):
    query: Annotated[str, StringConstraints(min_length=1, max_length=1024)]


def _integral_float_as_int(value: Any) -> Any:
    """JSON Schema counts 2.0 as an integer; so do we. Anything else is left for strict checking."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


class CartProperties(_Properties):
    product_id: NonEmpty
    quantity: Annotated[int, Field(ge=1), BeforeValidator(_integral_float_as_int)]
    price: Annotated[float, Field(ge=0, allow_inf_nan=False)]


class PurchaseProperties(_Properties):
    order_id: NonEmpty
    amount: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    currency: Currency


PROPERTY_MODELS: dict[str, type[_Properties] | None] = {
    "page_view": PageViewProperties,
    "click": None,
    "search": SearchProperties,
    "add_to_cart": CartProperties,
    "remove_from_cart": CartProperties,
    "checkout_started": None,
    "purchase": PurchaseProperties,
    "login": None,
    "login_failed": None,
    "signup": None,
}
EVENT_TYPES = tuple(PROPERTY_MODELS)


class EventIn(BaseModel):
    """One event as a client sends it."""

    # strict: `"amount": false` or `"user_id": 42` are errors, not silently coerced values.
    model_config = ConfigDict(extra="forbid", strict=True)

    event_id: EventId | None = Field(default=None, json_schema_extra={"not": {"const": "batch"}})
    event_type: str
    user_id: Annotated[str, StringConstraints(min_length=1, max_length=USER_ID_MAX_LENGTH)]
    session_id: Annotated[str, StringConstraints(min_length=1, max_length=128)] | None = None
    timestamp: (
        Annotated[str, StringConstraints(max_length=64), Field(json_schema_extra={"format": "date-time"})]
        | None
    ) = None
    sent_at: (
        Annotated[str, StringConstraints(max_length=64), Field(json_schema_extra={"format": "date-time"})]
        | None
    ) = None
    properties: dict[str, Any] = Field(
        default_factory=dict, json_schema_extra={"maxProperties": MAX_PROPERTY_KEYS}
    )

    @field_validator("event_type")
    @classmethod
    def _known_type(cls, value: str) -> str:
        if value not in PROPERTY_MODELS:
            raise ValueError(f"unknown event_type {value!r}; expected one of: {', '.join(EVENT_TYPES)}")
        return value

    @field_validator("event_id")
    @classmethod
    def _readable_id(cls, value: str | None) -> str | None:
        # /api/events/batch is the batch endpoint, so an event called "batch" could never be read back.
        if value == "batch":
            raise ValueError("'batch' is reserved; choose another event_id")
        return value

    @field_validator("user_id", "session_id")
    @classmethod
    def _storable(cls, value: str | None) -> str | None:
        if value is not None and NUL in value:
            raise ValueError(_NUL_MESSAGE)
        return value

    @field_validator("timestamp", "sent_at")
    @classmethod
    def _iso_8601(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                parse_iso(value)
            except OverflowError:
                pass  # valid ISO 8601 but beyond year 1..9999 in UTC: enrichment clamps and flags it
            except ValueError:
                raise ValueError("not an ISO 8601 timestamp (e.g. 2026-11-26T10:00:00Z)") from None
        return value

    @field_validator("properties")
    @classmethod
    def _bounded(cls, value: dict[str, Any]) -> dict[str, Any]:
        if len(value) > MAX_PROPERTY_KEYS:
            raise ValueError(f"at most {MAX_PROPERTY_KEYS} keys, got {len(value)}")
        if _deeper_than(value, MAX_PROPERTY_DEPTH):
            raise ValueError(f"nesting deeper than {MAX_PROPERTY_DEPTH} levels")
        return value


# Custom events (sent through the SDK-compatible endpoints, compat/): any name, stored as it is.
CUSTOM_EVENT_TYPE_MAX_LENGTH = 200


def is_custom_event_type(value: Any) -> bool:
    """A usable custom event name: 1-200 characters, already trimmed."""
    return (
        isinstance(value, str) and 0 < len(value) <= CUSTOM_EVENT_TYPE_MAX_LENGTH and value == value.strip()
    )


# Metrics label custom events "custom": their names are the clients' and unbounded in number.
CUSTOM_METRIC_LABEL = "custom"


def metric_event_type(event: Any) -> str:
    """The `event_type` label of an (enriched) event in metrics."""
    if not isinstance(event, dict):
        return ""
    return CUSTOM_METRIC_LABEL if event.get("custom") is True else str(event.get("event_type", ""))


class CustomEventIn(EventIn):
    """An event outside the catalog, named by the client. Only the SDK-compatible endpoints build
    these (the native API keeps answering 400 for unknown types); the enriched event carries
    `custom: true` so the pipeline can tell a deliberate custom event from a bad type."""

    @field_validator("event_type")
    @classmethod
    def _known_type(cls, value: str) -> str:
        if not is_custom_event_type(value):
            raise ValueError(f"a custom event name is 1-{CUSTOM_EVENT_TYPE_MAX_LENGTH} characters, trimmed")
        if value in PROPERTY_MODELS:
            # Scoring, fraud and carts read catalog names: such an event must validate as its type.
            raise ValueError(f"{value!r} is a catalog type, not a custom event name")
        return value


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether objects/arrays nest more than `limit` levels. Iterative and stops at `limit + 1`:
    a recursive walk of a body nested a few hundred levels deep (1 KB of brackets) overflows
    Python's stack."""
    if not isinstance(value, dict | list):
        return False
    # Only containers are pushed: most properties are flat, and a tuple per scalar was most of
    # the batched API's validation time.
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        for child in node.values() if isinstance(node, dict) else node:
            if isinstance(child, dict | list):
                stack.append((child, depth + 1))
    return False


# JSON can only write U+0000 as this escape, so an encoding without it holds no NUL anywhere.
_NUL_ESCAPED = b"\\u0000"


def _nul_path(value: Any, path: str) -> str | None:
    """The path of the first key or string holding NUL, if any (`value` is at most 5 levels deep).

    One C-speed encoding answers "none" for almost every event; walking every key and string in
    Python was a fifth of the batched API's validation time."""
    try:
        if _NUL_ESCAPED not in orjson.dumps(value):
            return None
    except orjson.JSONEncodeError:
        pass  # not JSON-encodable as it is: walk it
    stack: list[tuple[Any, str]] = [(value, path)]
    while stack:
        node, where = stack.pop()
        if isinstance(node, str):
            if NUL in node:
                return where
        elif isinstance(node, dict):
            for key, child in node.items():
                child_path = f"{where}.{key.replace(NUL, _NUL_SHOWN)}"
                if NUL in key:
                    return child_path
                stack.append((child, child_path))
        elif isinstance(node, list):
            stack.extend((child, f"{where}[{index}]") for index, child in enumerate(node))
    return None


def _field_path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path = f"{path}.{part}" if path else str(part)
    return path or "body"


def _details(error: ValidationError, prefix: tuple[str, ...] = ()) -> list[ErrorDetail]:
    details = []
    for item in error.errors(include_url=False):
        message = item["msg"].removeprefix("Value error, ")
        details.append(ErrorDetail(_field_path(prefix + tuple(item["loc"])), message))
    return details


def is_event_id(value: str) -> bool:
    """Whether `value` could be a stored event's id (one the API accepts or makes). Reads check it
    first: an id that can never be stored is simply not found, whatever the store does with it
    (PostgreSQL refuses a NUL in any query parameter)."""
    return len(value) <= EVENT_ID_MAX_LENGTH and re.fullmatch(EVENT_ID_PATTERN, value) is not None


def is_user_id(value: str) -> bool:
    """Whether `value` could be a stored event's user id (see `is_event_id`)."""
    return 1 <= len(value) <= USER_ID_MAX_LENGTH and NUL not in value


def validate_event(raw: Any) -> tuple[EventIn | None, list[ErrorDetail]]:
    """(event, []) when valid, (None, errors with field paths) otherwise."""
    if not isinstance(raw, dict):
        return None, [ErrorDetail("body", "an event must be a JSON object")]
    try:
        event = EventIn.model_validate(raw)
    except ValidationError as exc:
        return None, _details(exc)
    nul_at = _nul_path(event.properties, "properties")
    if nul_at is not None:
        return None, [ErrorDetail(nul_at, _NUL_MESSAGE)]
    model = PROPERTY_MODELS[event.event_type]
    if model is not None:
        try:
            model.model_validate(event.properties)
        except ValidationError as exc:
            return None, _details(exc, ("properties",))
    return event, []


def validate_custom_event(raw: dict[str, Any]) -> tuple[CustomEventIn | None, list[ErrorDetail]]:
    """(event, []) when `raw` is a valid custom event, (None, errors with field paths) otherwise."""
    try:
        return CustomEventIn.model_validate(raw), []
    except ValidationError as exc:
        return None, _details(exc)


# --- OpenAPI: the same models, as a discriminated union by event_type ----------------------------


def _documented_event_model(event_type: str, properties: type[_Properties] | None) -> type[BaseModel]:
    fields: dict[str, Any] = {
        name: (info.annotation, info) for name, info in EventIn.model_fields.items() if name != "event_type"
    }
    fields["event_type"] = (Literal[event_type], ...)
    if properties is not None:
        fields["properties"] = (properties, ...)
    name = "".join(part.title() for part in event_type.split("_")) + "Event"
    return create_model(name, __config__=ConfigDict(extra="forbid", strict=True), **fields)


def event_json_schema(ref_prefix: str = "#/components/schemas/") -> tuple[dict[str, Any], dict[str, Any]]:
    """(schema of one event, definitions it refers to) for the OpenAPI document."""
    models = [_documented_event_model(t, m) for t, m in PROPERTY_MODELS.items()]
    union = Annotated[Union[tuple(models)], Field(discriminator="event_type")]  # type: ignore[valid-type]  # noqa: UP007
    adapter: TypeAdapter[Any] = TypeAdapter(union)  # type: ignore[arg-type]
    schema = adapter.json_schema(ref_template=ref_prefix + "{model}", mode="validation")
    definitions = schema.pop("$defs", {})
    return schema, definitions
