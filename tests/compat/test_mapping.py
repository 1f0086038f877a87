"""The pure mapping of SDK messages onto CloudScale events: table tests, no I/O."""

from __future__ import annotations

from typing import Any

import pytest

from compat.mapping import (
    MAX_CONTEXT_BYTES,
    Candidate,
    Rejection,
    bounded_context,
    event_id_for,
    map_posthog,
    map_segment,
)


def segment(**message: Any) -> Candidate:
    mapped = map_segment({"type": "track", "userId": "u-1", **message})
    assert isinstance(mapped, Candidate), mapped
    return mapped


def posthog(**message: Any) -> Candidate:
    mapped = map_posthog({"distinct_id": "d-1", **message})
    assert isinstance(mapped, Candidate), mapped
    return mapped


@pytest.mark.parametrize(
    ("name", "properties", "event_type", "expected"),
    [
        ("Order Completed", {"order_id": "o-1", "total": 30, "revenue": 25}, "purchase",
         {"order_id": "o-1", "amount": 30, "currency": "USD"}),
        ("Order Completed", {"order_id": 7, "revenue": "25.5", "currency": "eur"}, "purchase",
         {"order_id": "7", "amount": 25.5, "currency": "EUR"}),
        ("Product Added", {"sku": "s-1", "price": 3}, "add_to_cart", {"product_id": "s-1", "quantity": 1, "price": 3}),
        ("Product Removed", {"product_id": "p-1", "sku": "s-1", "quantity": 2, "price": 3}, "remove_from_cart",
         {"product_id": "p-1", "quantity": 2, "price": 3}),
        ("Products Searched", {"query": "socks"}, "search", {"query": "socks"}),
        ("Checkout Started", {}, "checkout_started", {}),
        ("Signed Up", {}, "signup", {}),
        ("Signed In", {}, "login", {}),
        ("Video Played", {"length": 3}, None, {"length": 3}),
    ],
)  # fmt: skip
def test_spec_names_map_to_catalog_types_the_same_way_in_both_protocols(
    name: str, properties: dict[str, Any], event_type: str | None, expected: dict[str, Any]
) -> None:
    for mapped in (segment(event=name, properties=properties), posthog(event=name, properties=properties)):
        assert mapped.spec_type == event_type
        assert mapped.event["event_type"] == (event_type or name)
        assert expected.items() <= mapped.event["properties"].items()
        assert mapped.custom_properties == properties  # what a custom fallback would store


def test_a_page_takes_its_url_from_the_properties_or_the_page_context() -> None:
    from_context = map_segment({"type": "page", "userId": "u", "context": {"page": {"url": "https://c/"}}})
    from_properties = map_segment({"type": "page", "userId": "u", "properties": {"url": "https://p/"},
                                   "context": {"page": {"url": "https://c/"}}})  # fmt: skip
    pageview = posthog(event="$pageview", properties={"$current_url": "https://ph/"})
    assert isinstance(from_context, Candidate) and isinstance(from_properties, Candidate)
    assert from_context.event["properties"]["url"] == "https://c/"
    assert from_properties.event["properties"]["url"] == "https://p/"
    assert (pageview.event["event_type"], pageview.event["properties"]["url"]) == ("page_view", "https://ph/")


@pytest.mark.parametrize(
    ("message", "name", "properties"),
    [
        ({"type": "identify", "traits": {"plan": "pro"}}, "$identify", {"plan": "pro"}),
        ({"type": "group", "groupId": 9, "traits": {"size": 3}}, "$group", {"size": 3, "group_id": "9"}),
        ({"type": "alias", "previousId": "old"}, "$alias", {"previous_id": "old"}),
        ({"type": "screen", "name": "Home"}, "$screen", {"name": "Home"}),
    ],
)
def test_other_segment_calls_become_reserved_custom_names(
    message: dict[str, Any], name: str, properties: dict[str, Any]
) -> None:
    mapped = map_segment({"userId": "u-1", **message})
    assert isinstance(mapped, Candidate)
    assert (mapped.event["event_type"], mapped.spec_type, mapped.event["properties"]) == (
        name,
        None,
        properties,
    )


def test_posthog_dollar_names_pass_through_and_dollar_properties_are_context() -> None:
    mapped = posthog(
        event="$identify", properties={"$lib": "posthog-python", "$set": {"a": 1}, "plan": "pro"}
    )
    assert (mapped.event["event_type"], mapped.spec_type) == ("$identify", None)
    assert mapped.event["properties"] == {"plan": "pro"}
    assert mapped.context == {"$lib": "posthog-python", "$set": {"a": 1}}


@pytest.mark.parametrize(
    ("message", "user_id"),
    [
        ({"userId": "u-1", "anonymousId": "a-1"}, "u-1"),
        ({"userId": None, "anonymousId": "a-1"}, "a-1"),
        ({"userId": 42}, "42"),
        ({"userId": "", "anonymousId": "a-2"}, "a-2"),
    ],
)
def test_the_user_is_user_id_else_anonymous_id(message: dict[str, Any], user_id: str) -> None:
    mapped = map_segment({"type": "track", "event": "e", **message})
    assert isinstance(mapped, Candidate) and mapped.event["user_id"] == user_id


def test_no_user_at_all_is_a_rejection_with_its_reason() -> None:
    for mapped in (map_segment({"type": "track", "event": "e", "userId": None, "anonymousId": None}),
                   map_posthog({"event": "e", "distinct_id": None})):  # fmt: skip
        assert isinstance(mapped, Rejection) and mapped.issue.code == "missing_user_id"


@pytest.mark.parametrize(
    ("message", "code"),
    [
        ("a string", "invalid_message"),
        ({"type": "teleport", "userId": "u"}, "unknown_call_type"),
        ({"type": "track", "userId": "u"}, "missing_event_name"),
        ({"type": "track", "userId": "u", "event": "   "}, "missing_event_name"),
        ({"type": "track", "userId": "u", "event": "x" * 201}, "invalid_event_name"),
    ],
)
def test_unusable_segment_messages_are_rejected_with_a_code(message: Any, code: str) -> None:
    mapped = map_segment(message)
    assert isinstance(mapped, Rejection) and mapped.issue.code == code


def test_event_names_are_trimmed() -> None:
    assert segment(event="  Video Played ").event["event_type"] == "Video Played"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("5f0c8c1e-4b6a-4d1e-9a36-1a2b3c4d5e6f", "5f0c8c1e-4b6a-4d1e-9a36-1a2b3c4d5e6f"),
        (12345, "12345"),
        (None, None),
        ("", None),
    ],
)
def test_ids_that_fit_our_rules_are_kept(value: Any, expected: str | None) -> None:
    assert event_id_for(value) == expected


@pytest.mark.parametrize("value", ["has spaces", "x" * 65, "batch", "-leading-dash", "ünïcode"])
def test_other_ids_become_a_stable_derived_id(value: str) -> None:
    derived = event_id_for(value)
    assert derived is not None and derived.startswith("sdk-") and len(derived) <= 64
    assert derived == event_id_for(value)  # a retry of the same message is still a duplicate
    assert derived != event_id_for(value + "!")


def test_timestamps_and_sent_at_come_from_the_message_or_the_batch() -> None:
    own = segment(event="e", timestamp="2026-11-30T10:00:00Z", sentAt="2026-11-30T10:00:05Z")
    batch = map_segment({"type": "track", "event": "e", "userId": "u", "originalTimestamp": "2026-11-30T09:00:00Z"},
                        batch_sent_at="2026-11-30T09:00:01Z")  # fmt: skip
    assert (own.event["timestamp"], own.event["sent_at"]) == ("2026-11-30T10:00:00Z", "2026-11-30T10:00:05Z")
    assert isinstance(batch, Candidate)
    assert (batch.event["timestamp"], batch.event["sent_at"]) == (
        "2026-11-30T09:00:00Z",
        "2026-11-30T09:00:01Z",
    )
    ignored = map_posthog({"event": "e", "distinct_id": "d", "timestamp": "2026-11-30T10:00:00Z",
                           "properties": {"$ignore_sent_at": True}}, batch_sent_at="2026-11-30T11:00:00Z")  # fmt: skip
    assert isinstance(ignored, Candidate) and "sent_at" not in ignored.event


def test_a_large_context_is_bounded_and_says_what_it_dropped() -> None:
    context = {"library": {"name": "x"}, "huge": "h" * 20_000, "ip": "203.0.113.1"}
    kept, issue = bounded_context(context)
    assert kept == {"library": {"name": "x"}, "ip": "203.0.113.1", "$dropped": ["huge"]}
    assert issue is not None and issue.code == "context_truncated"
    assert bounded_context({"ip": "203.0.113.1"}) == ({"ip": "203.0.113.1"}, None)
    assert MAX_CONTEXT_BYTES < 20_000
