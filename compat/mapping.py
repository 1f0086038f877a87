"""Pure mapping of Segment/RudderStack and PostHog messages onto CloudScale events (no I/O).

A message becomes a candidate event in the native shape (`event_type`, `user_id`, `properties`...),
which the native validator then judges: a Segment e-commerce or lifecycle name becomes its catalog
type when its properties validate as that type, and a custom event under its own name otherwise.
Everything else the SDK sent that is not an event field (`context`, PostHog's `$` properties) is
kept beside the event, bounded in size.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

import orjson

from events.schemas import CUSTOM_EVENT_TYPE_MAX_LENGTH, PROPERTY_MODELS

SEGMENT = "segment"  # Segment and RudderStack: the same wire format
POSTHOG = "posthog"
PROTOCOLS = (SEGMENT, POSTHOG)

# Segment's e-commerce and lifecycle spec names, in whatever protocol they arrive.
SPEC_NAMES: dict[str, str] = {
    "Order Completed": "purchase",
    "Product Added": "add_to_cart",
    "Product Removed": "remove_from_cart",
    "Checkout Started": "checkout_started",
    "Products Searched": "search",
    "Signed Up": "signup",
    "Signed In": "login",
}
# Segment calls other than track and page become reserved custom names.
SEGMENT_CALL_NAMES = {"identify": "$identify", "group": "$group", "alias": "$alias", "screen": "$screen"}
SEGMENT_CALLS = ("track", "page", *SEGMENT_CALL_NAMES)
PAGE_NAME = "$page"  # a page call that is not a valid page_view (no URL) is kept under this name
POSTHOG_PAGEVIEW = "$pageview"

# The SDK's context is kept with the event up to this size (serialised); larger ones lose their
# biggest keys first, and say which.
MAX_CONTEXT_BYTES = 8 * 1024
DEFAULT_CURRENCY = "USD"
_OUR_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
_DERIVED_ID_PREFIX = "sdk-"
_NO_USER = "no user id: none of userId, anonymousId (Segment, RudderStack) or distinct_id (PostHog) is set"


@dataclass(frozen=True)
class Issue:
    """Why one message was rejected or not mapped: one ingestion warning."""

    code: str
    field: str
    message: str


@dataclass
class Candidate:
    """One SDK message as a native-shaped event, plus what is kept beside it."""

    name: str  # the event name as the SDK sent it (warnings show it)
    event: dict[str, Any]  # event_type, user_id, properties, ... as the native API takes them
    spec_type: str | None  # the catalog type the name maps to, if any
    custom_properties: dict[str, Any]  # the properties as sent, for the custom-event fallback
    context: dict[str, Any] | None
    issues: list[Issue] = field(default_factory=list)


@dataclass(frozen=True)
class Rejection:
    name: str
    event_id: str
    issue: Issue


def oversized(message: Any, *, limit: int) -> Rejection | None:
    """A message over our 32 KiB event limit (PostHog's Python SDK allows 900 KiB) is rejected."""
    size = len(orjson.dumps(message))
    if size <= limit:
        return None
    name = message.get("event") if isinstance(message, dict) else None
    message_id = (message.get("messageId") or message.get("uuid")) if isinstance(message, dict) else None
    issue = Issue("event_too_large", "message", f"the event is {size} bytes; the limit is {limit}")
    return Rejection(name[:200] if isinstance(name, str) else "", event_id_for(message_id) or "", issue)


def event_id_for(value: Any) -> str | None:
    """Our event id for an SDK message id: as it is when it fits our id rules, else a stable id
    derived from it (a retry of the same message is still a duplicate); None when there is none."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        value = str(value)
    if not isinstance(value, str) or not value:
        return None
    if _OUR_ID.match(value) and value != "batch":
        return value
    return _DERIVED_ID_PREFIX + hashlib.sha256(value.encode()).hexdigest()[:48]


def _id_string(value: Any) -> str | None:
    """SDKs send ids as strings or numbers, and `null` for unset ones."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str) and value.strip():
        return value
    return None


def _time_string(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _number(value: Any) -> Any:
    """Numbers as numbers; numeric strings (common from browsers) as floats; anything else as is,
    so the validator names it."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _first(properties: dict[str, Any], *names: str) -> Any:
    for name in names:
        value = properties.get(name)
        if value is not None and value != "":
            return value
    return None


def catalog_properties(event_type: str, properties: dict[str, Any], *, url: Any = None) -> dict[str, Any]:
    """The properties of a catalog type, filled from the spec's own property names."""
    derived: dict[str, Any] = {}
    if event_type == "purchase":
        derived["order_id"] = _id_string(_first(properties, "order_id", "orderId"))
        derived["amount"] = _number(_first(properties, "amount", "total", "revenue"))
        currency = properties.get("currency")
        derived["currency"] = currency.upper() if isinstance(currency, str) and currency else DEFAULT_CURRENCY
    elif event_type in {"add_to_cart", "remove_from_cart"}:
        derived["product_id"] = _id_string(_first(properties, "product_id", "productId", "sku"))
        quantity = properties.get("quantity")
        derived["quantity"] = 1 if quantity is None else _number(quantity)
        derived["price"] = _number(properties.get("price"))
    elif event_type == "search":
        derived["query"] = properties.get("query")
    elif event_type == "page_view":
        derived["url"] = properties.get("url") or url
    return {**properties, **{name: value for name, value in derived.items() if value is not None}}


def bounded_context(context: Any) -> tuple[dict[str, Any] | None, Issue | None]:
    """The SDK's context, at most MAX_CONTEXT_BYTES serialised; the largest keys go first."""
    if not isinstance(context, dict) or not context:
        return None, None
    if len(orjson.dumps(context)) <= MAX_CONTEXT_BYTES:  # the common case: one serialisation
        return context, None
    sizes = {key: len(orjson.dumps(value)) + len(str(key)) + 4 for key, value in context.items()}
    kept, dropped, total = dict(context), [], sum(sizes.values())
    for key in sorted(sizes, key=lambda k: sizes[k], reverse=True):
        if total <= MAX_CONTEXT_BYTES - 256:  # room for the list of dropped keys
            break
        del kept[key]
        dropped.append(str(key))
        total -= sizes[key]
    kept["$dropped"] = dropped[:20]
    return kept, Issue(
        "context_truncated",
        "context",
        f"context is larger than {MAX_CONTEXT_BYTES} bytes; dropped: {', '.join(dropped[:20])}",
    )


def _candidate(
    *,
    name: str,
    spec_type: str | None,
    message_id: Any,
    user_id: str | None,
    session_id: Any,
    timestamp: Any,
    sent_at: Any,
    properties: dict[str, Any],
    context: Any,
    url: Any = None,
) -> Candidate | Rejection:
    event_id = event_id_for(message_id)
    if user_id is None:
        return Rejection(name, event_id or "", Issue("missing_user_id", "userId", _NO_USER))
    event: dict[str, Any] = {"event_type": spec_type or name, "user_id": user_id}
    if event_id is not None:
        event["event_id"] = event_id
    session = _id_string(session_id)
    if session is not None:
        event["session_id"] = session
    if _time_string(timestamp):
        event["timestamp"] = timestamp
        if _time_string(sent_at):
            event["sent_at"] = sent_at
    event["properties"] = catalog_properties(spec_type, properties, url=url) if spec_type else properties
    kept_context, issue = bounded_context(context)
    return Candidate(
        name=name,
        event=event,
        spec_type=spec_type,
        custom_properties=properties,
        context=kept_context,
        issues=[issue] if issue else [],
    )


def _catalog_type(name: str) -> str | None:
    if name in SPEC_NAMES:
        return SPEC_NAMES[name]
    return name if name in PROPERTY_MODELS else None


def _properties(value: Any) -> dict[str, Any]:
    return dict(value) if isinstance(value, dict) else {}


def _event_name(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    name = value.strip()
    return name if 0 < len(name) <= CUSTOM_EVENT_TYPE_MAX_LENGTH else None


def _bad_name(value: Any, field_name: str) -> Issue:
    if isinstance(value, str) and value.strip():
        too_long = f"event names are at most {CUSTOM_EVENT_TYPE_MAX_LENGTH} characters"
        return Issue("invalid_event_name", field_name, too_long)
    return Issue("missing_event_name", field_name, "the event has no name")


def map_segment(message: Any, *, call: str | None = None, batch_sent_at: Any = None) -> Candidate | Rejection:
    """One Segment/RudderStack message (`/v1/batch` item or a `/v1/<call>` body)."""
    if not isinstance(message, dict):
        return Rejection("", "", Issue("invalid_message", "message", "a message must be a JSON object"))
    call_type = message.get("type") or call
    message_id = message.get("messageId")
    if call_type not in SEGMENT_CALLS:
        issue = Issue(
            "unknown_call_type", "type", f"type {call_type!r} is not one of: {', '.join(SEGMENT_CALLS)}"
        )
        return Rejection(str(message.get("event") or "")[:200], event_id_for(message_id) or "", issue)
    context = message.get("context")
    context_dict = context if isinstance(context, dict) else {}
    properties = _properties(message.get("properties"))
    url: Any = None
    spec_type: str | None
    if call_type == "track":
        name = _event_name(message.get("event"))
        if name is None:
            return Rejection("", event_id_for(message_id) or "", _bad_name(message.get("event"), "event"))
        spec_type = _catalog_type(name)
    elif call_type == "page":
        name, spec_type = PAGE_NAME, "page_view"
        page = context_dict.get("page")
        url = page.get("url") if isinstance(page, dict) else None
        if isinstance(message.get("name"), str):
            properties.setdefault("name", message["name"])
    else:
        name, spec_type = SEGMENT_CALL_NAMES[call_type], None
        if call_type == "identify":
            properties = _properties(message.get("traits") or context_dict.get("traits"))
        elif call_type == "group":
            properties = {
                **_properties(message.get("traits")),
                "group_id": _id_string(message.get("groupId")),
            }
        elif call_type == "alias":
            properties = {"previous_id": _id_string(message.get("previousId"))}
        elif isinstance(message.get("name"), str):  # screen
            properties.setdefault("name", message["name"])
    user_id = _id_string(message.get("userId")) or _id_string(message.get("anonymousId"))
    return _candidate(
        name=name,
        spec_type=spec_type,
        message_id=message_id,
        user_id=user_id,
        session_id=context_dict.get("sessionId"),
        timestamp=message.get("timestamp") or message.get("originalTimestamp"),
        sent_at=message.get("sentAt") or batch_sent_at,
        properties=properties,
        context=context,
        url=url,
    )


def map_posthog(message: Any, *, batch_sent_at: Any = None) -> Candidate | Rejection:
    """One PostHog event. Its `$` properties (library, device, session...) are PostHog's context:
    they are kept as the event's context, the rest are its properties."""
    if not isinstance(message, dict):
        return Rejection("", "", Issue("invalid_message", "message", "an event must be a JSON object"))
    message_id = message.get("uuid")
    name = _event_name(message.get("event"))
    if name is None:
        return Rejection("", event_id_for(message_id) or "", _bad_name(message.get("event"), "event"))
    raw_properties = _properties(message.get("properties"))
    for top_level in ("$set", "$set_once"):  # posthog-python's set()/set_once() put them at the top
        if isinstance(message.get(top_level), dict):
            raw_properties.setdefault(top_level, message[top_level])
    properties = {k: v for k, v in raw_properties.items() if not str(k).startswith("$")}
    context = {k: v for k, v in raw_properties.items() if str(k).startswith("$")}
    user_id = _id_string(message.get("distinct_id")) or _id_string(raw_properties.get("distinct_id"))
    properties.pop("distinct_id", None)
    properties.pop("token", None)  # posthog-js: the project key travels in every event
    spec_type = "page_view" if name == POSTHOG_PAGEVIEW else _catalog_type(name)
    ignore_sent_at = raw_properties.get("$ignore_sent_at") is True
    return _candidate(
        name=name,
        spec_type=spec_type,
        message_id=message_id,
        user_id=user_id,
        session_id=raw_properties.get("$session_id"),
        timestamp=message.get("timestamp"),
        sent_at=None if ignore_sent_at else (message.get("sent_at") or batch_sent_at),
        properties=properties,
        context=context,
        url=raw_properties.get("$current_url"),
    )
