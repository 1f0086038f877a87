"""The SDK-compatible endpoints over HTTP (Django's client), on the real broker and database:
authentication as each SDK sends it, the answers SDKs rely on, decompression limits, mapping,
the ledger and the ingestion warnings."""

from __future__ import annotations

import base64
import gzip
import json
import uuid
import zlib
from datetime import timedelta
from typing import Any

import pytest
from celery import Celery
from django.conf import settings
from django.test import Client

import events.publishing
from cloudscale_project.timeutil import isoformat_z, parse_iso, utcnow
from compat.models import IngestionWarning
from compat.tasks import purge_expired_warnings
from events.ledger import late_commits
from events.models import StoredEvent
from events.pipeline import batch_process_message
from fraud.models import FraudAlert, FraudRuleSetting
from fraud.rules import Rule
from scoring.models import UserScore
from tenants.models import Tenant
from tenants.services import tenant_set_active
from tests.conftest import Actor, wait_until
from tests.events.test_ingest_api import queued_messages

pytestmark = [pytest.mark.django_db, pytest.mark.core]


def basic(key: str) -> str:
    return "Basic " + base64.b64encode(f"{key}:".encode()).decode()


def track(event: str = "Video Played", **fields: Any) -> dict[str, Any]:
    return {"type": "track", "event": event, "userId": "u-1", "messageId": str(uuid.uuid4()), **fields}


def segment(client: Client, key: str | None, body: Any, path: str = "/v1/batch", **extra: Any) -> Any:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    if key:
        extra["HTTP_AUTHORIZATION"] = basic(key)
    content_type = extra.pop("content_type", "application/json")
    return client.post(path, data=data, content_type=content_type, **extra)


def posthog(client: Client, body: Any, path: str = "/batch/", **extra: Any) -> Any:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return client.post(path, data=data, content_type=extra.pop("content_type", "application/json"), **extra)


def published() -> list[dict[str, Any]]:
    return [event for message in queued_messages() for event in message[1]["events"]]


def sdk_error(response: Any, status: int, code: str, *, posthog_path: bool = False) -> dict[str, Any]:
    """Whole-request errors: our error object plus top-level `code`/`message` (and PostHog's `detail`)."""
    assert response.status_code == status, response.content
    body = response.json()
    assert body["code"] == body["error"]["code"] == code
    assert body["message"] == body["error"]["message"] and body["message"]
    assert ("detail" in body) is posthog_path
    if posthog_path:
        assert body["detail"] == body["message"]
    return body


# --- answers -------------------------------------------------------------------------------------------


def test_it_answers_exactly_200_with_the_receipt_counts(client: Client, acme: Actor) -> None:
    good = track()
    response = segment(client, acme.key, {"batch": [good, good, track(userId=None)], "writeKey": acme.key})
    assert response.status_code == 200
    body = response.json()
    assert (body["accepted"], body["duplicates"], body["rejected"], body["success"]) == (1, 1, 1, True)
    assert body["correlation_id"] == response["X-Correlation-ID"]
    [event] = published()
    assert (event["event_id"], event["event_type"], event["custom"]) == (
        good["messageId"],
        "Video Played",
        True,
    )


@pytest.mark.parametrize(
    ("path", "call"),
    [("/v1/track", "track"), ("/v1/identify", "identify"), ("/v1/page", "page"), ("/v1/screen", "screen"),
     ("/v1/group", "group"), ("/v1/alias", "alias"), ("/v1/batch/", None)],
)  # fmt: skip
def test_every_segment_path_takes_its_call(client: Client, acme: Actor, path: str, call: str | None) -> None:
    message = {"userId": "u-1", "event": "Video Played", "properties": {"url": "https://a.example/"},
               "traits": {"plan": "pro"}, "groupId": "g-1", "previousId": "u-0"}  # fmt: skip
    body = {"batch": [{**message, "type": "track"}]} if call is None else message
    assert segment(client, acme.key, body, path=path).json()["accepted"] == 1
    [event] = published()
    expected = {None: "Video Played", "track": "Video Played", "page": "page_view", "identify": "$identify",
                "screen": "$screen", "group": "$group", "alias": "$alias"}  # fmt: skip
    assert event["event_type"] == expected[call]


@pytest.mark.parametrize(
    "path", ["/batch/", "/batch", "/capture/", "/capture", "/e/", "/e", "/i/v0/e/", "/i/v0/e"]
)
def test_every_posthog_path_answers_200(client: Client, acme: Actor, path: str) -> None:
    body = {
        "api_key": acme.key,
        "batch": [{"event": "Signed In", "distinct_id": "d-1", "uuid": str(uuid.uuid4())}],
    }
    response = posthog(client, body, path=path)
    assert response.status_code == 200 and response.json()["status"] == 1
    assert [e["event_type"] for e in published()] == ["login"]


def test_the_key_is_read_where_each_sdk_puts_it(client: Client, acme: Actor) -> None:
    message = {"event": "Signed In", "distinct_id": "d-1"}
    answers = [
        segment(client, acme.key, {"batch": [track()]}).status_code,  # Basic, user name = key
        segment(client, None, {"batch": [track()], "writeKey": acme.key}).status_code,
        segment(client, None, {"batch": [track()]}, HTTP_AUTHORIZATION=f"Bearer {acme.key}").status_code,
        posthog(client, {"api_key": acme.key, "batch": [message]}).status_code,
        posthog(client, {"token": acme.key, **message}, path="/capture/").status_code,
        posthog(client, [{**message, "properties": {"token": acme.key}}], path="/e/").status_code,
        posthog(client, {"batch": [message]}, HTTP_AUTHORIZATION=f"Bearer {acme.key}").status_code,
    ]
    assert answers == [200] * 7


def test_browser_sdks_may_post_from_any_origin(client: Client, acme: Actor) -> None:
    preflight = client.options(
        "/e/", HTTP_ORIGIN="https://shop.example", HTTP_ACCESS_CONTROL_REQUEST_METHOD="POST"
    )
    assert preflight.status_code == 200 and preflight["Access-Control-Allow-Origin"] == "*"
    assert "Content-Encoding" in preflight["Access-Control-Allow-Headers"]
    answer = posthog(client, {"api_key": acme.key, "batch": [{"event": "e", "distinct_id": "d"}]}, path="/e/")
    assert answer["Access-Control-Allow-Origin"] == "*"


def test_401_without_a_key_or_with_a_wrong_one_in_the_shape_sdks_read(client: Client, acme: Actor) -> None:
    sdk_error(segment(client, None, {"batch": [track()]}), 401, "not_authenticated")
    sdk_error(segment(client, "cs_wrong", {"batch": [track()]}), 401, "authentication_failed")
    sdk_error(posthog(client, {"batch": [{"event": "x"}]}), 401, "not_authenticated", posthog_path=True)
    wrong = posthog(client, {"api_key": "cs_wrong", "batch": [{"event": "x"}]})
    sdk_error(wrong, 401, "authentication_failed", posthog_path=True)
    assert published() == []


def test_403_for_a_disabled_tenant(client: Client, acme: Actor) -> None:
    tenant_set_active(slug="acme", active=False)
    sdk_error(segment(client, acme.key, {"batch": [track()]}), 403, "permission_denied")


def test_400_when_the_body_is_not_json_or_has_no_events(client: Client, acme: Actor) -> None:
    sdk_error(segment(client, acme.key, b"{not json"), 400, "malformed_json")
    sdk_error(segment(client, acme.key, {"batch": []}), 400, "validation_error")
    sdk_error(segment(client, acme.key, b""), 400, "malformed_json")
    sdk_error(posthog(client, {"api_key": acme.key}), 400, "validation_error", posthog_path=True)


def test_a_batch_of_only_bad_events_is_still_a_200_with_warnings(client: Client, acme: Actor) -> None:
    response = segment(client, acme.key, {"batch": [track(userId=None), "not an object"]})
    assert response.status_code == 200 and response.json()["rejected"] == 2
    assert sorted(IngestionWarning.objects.values_list("code", flat=True)) == [
        "invalid_message",
        "missing_user_id",
    ]


# --- compression and size --------------------------------------------------------------------------------


def test_it_inflates_gzip_and_deflate_whatever_the_content_type(client: Client, acme: Actor) -> None:
    def body() -> bytes:
        return json.dumps({"batch": [track()]}).encode()

    form = "application/x-www-form-urlencoded"  # RudderStack's Node SDK labels its gzip body so
    answers = [
        segment(client, acme.key, gzip.compress(body()), HTTP_CONTENT_ENCODING="gzip").status_code,
        segment(
            client, acme.key, gzip.compress(body()), HTTP_CONTENT_ENCODING="gzip", content_type=form
        ).status_code,
        segment(client, acme.key, gzip.compress(body()), content_type="text/plain").status_code,  # no header
        segment(client, acme.key, zlib.compress(body()), HTTP_CONTENT_ENCODING="deflate").status_code,
    ]
    assert answers == [200] * 4
    assert len(published()) == 4


def test_an_event_over_32_kib_is_rejected_with_a_warning_and_the_rest_kept(
    client: Client, acme: Actor
) -> None:
    big = {
        "event": "Big",
        "distinct_id": "d",
        "uuid": str(uuid.uuid4()),
        "properties": {"blob": "b" * 40_000},
    }
    small = {"event": "Small", "distinct_id": "d"}
    answer = posthog(client, {"api_key": acme.key, "batch": [big, small]}).json()
    assert (answer["accepted"], answer["rejected"]) == (1, 1)
    [warning] = IngestionWarning.objects.all()
    assert (warning.code, warning.event_id, warning.event_name) == ("event_too_large", big["uuid"], "Big")


def test_a_gzip_bomb_is_a_413_without_inflating_it(client: Client, acme: Actor) -> None:
    bomb = gzip.compress(b"[" + b" " * (64 * 1024 * 1024) + b"]")  # 64 MiB of JSON in ~64 KiB
    assert len(bomb) < 100 * 1024
    sdk_error(segment(client, acme.key, bomb, HTTP_CONTENT_ENCODING="gzip"), 413, "payload_too_large")
    sdk_error(
        posthog(client, bomb, HTTP_CONTENT_ENCODING="gzip"), 413, "payload_too_large", posthog_path=True
    )


def test_it_takes_5_mib_and_refuses_more(client: Client, acme: Actor) -> None:
    padding = "p" * 2000
    batch = [
        {"event": "Signed In", "distinct_id": f"d-{i}", "properties": {"pad": padding}} for i in range(2500)
    ]
    body = json.dumps({"api_key": acme.key, "batch": batch}).encode()
    assert 4 * 1024 * 1024 < len(body) < 5 * 1024 * 1024
    response = posthog(client, gzip.compress(body), HTTP_CONTENT_ENCODING="gzip")
    assert response.status_code == 200 and response.json()["accepted"] == 2500
    assert len(published()) == 2500  # in as many broker messages as the broker's size limit needs
    too_big = json.dumps({"api_key": acme.key, "batch": batch * 2}).encode()
    sdk_error(posthog(client, too_big), 413, "payload_too_large", posthog_path=True)


# --- mapping, ids, timestamps ----------------------------------------------------------------------------


def test_a_retried_message_is_a_duplicate_even_with_an_id_we_cannot_keep(client: Client, acme: Actor) -> None:
    message = track(messageId="order #42 / retry-safe?")
    first = segment(client, acme.key, {"batch": [message]}).json()
    again = segment(client, acme.key, {"batch": [message]}).json()
    assert (first["accepted"], again["duplicates"]) == (1, 1)
    [event] = published()
    assert event["event_id"].startswith("sdk-") and len(event["event_id"]) <= 64


def test_it_corrects_clock_skew_the_way_the_sdks_expect(client: Client, acme: Actor) -> None:
    # The client clock is 1 h behind: timestamp and sentAt are both 1 h early.
    skewed = isoformat_z(utcnow() - timedelta(hours=1))
    event_time = isoformat_z(parse_iso(skewed) - timedelta(seconds=30))
    segment(client, acme.key, {"batch": [track(timestamp=event_time)], "sentAt": skewed})
    ignored = {
        "event": "e",
        "distinct_id": "d",
        "timestamp": event_time,
        "properties": {"$ignore_sent_at": True},
    }
    posthog(client, {"api_key": acme.key, "sent_at": skewed, "batch": [ignored]})
    corrected, kept = published()
    assert corrected["skew_corrected"] is True and corrected["client_timestamp"] == event_time
    assert corrected["sent_at"] == skewed
    lag = parse_iso(corrected["received_at"]) - parse_iso(corrected["timestamp"])
    assert timedelta(seconds=29) < lag < timedelta(seconds=31)
    assert kept["skew_corrected"] is False and parse_iso(kept["timestamp"]) == parse_iso(event_time)


def test_a_spec_name_that_does_not_validate_is_kept_as_a_custom_event_with_a_warning(
    client: Client, acme: Actor
) -> None:
    good = track("Order Completed", properties={"order_id": "o-1", "revenue": 12})
    unmapped = track("Order Completed", properties={"revenue": 12})
    assert segment(client, acme.key, {"batch": [good, unmapped]}).json()["accepted"] == 2
    purchase, custom = published()
    assert purchase["event_type"] == "purchase" and "custom" not in purchase
    assert purchase["properties"] == {"order_id": "o-1", "revenue": 12, "amount": 12, "currency": "USD"}
    assert (custom["event_type"], custom["custom"], custom["properties"]) == (
        "Order Completed",
        True,
        {"revenue": 12},
    )
    [warning] = IngestionWarning.objects.all()
    assert (warning.code, warning.field, warning.event_id) == (
        "not_mapped",
        "properties.order_id",
        unmapped["messageId"],
    )
    no_id = {key: value for key, value in unmapped.items() if key != "messageId"}
    segment(client, acme.key, {"batch": [no_id]})
    [fresh] = published()
    assert IngestionWarning.objects.filter(code="not_mapped", event_id=fresh["event_id"]).exists()


def test_the_native_api_still_refuses_a_name_outside_the_catalog(client: Client, acme: Actor) -> None:
    response = client.post(
        "/api/events", data={"event_type": "Video Played", "user_id": "u-1"}, content_type="application/json",
        **acme.headers,
    )  # fmt: skip
    assert response.status_code == 400 and response.json()["error"]["code"] == "validation_error"


# --- failures the SDKs retry --------------------------------------------------------------------------------


def test_503_with_retry_after_when_the_broker_is_down_and_the_retry_is_accepted(
    client: Client, acme: Actor, monkeypatch: pytest.MonkeyPatch
) -> None:
    body = {
        "api_key": acme.key,
        "batch": [{"event": "Signed Up", "distinct_id": "d", "uuid": str(uuid.uuid4())}],
    }
    monkeypatch.setattr(events.publishing, "app", Celery(broker="redis://127.0.0.1:1/0"))
    refused = posthog(client, body)
    sdk_error(refused, 503, "broker_unavailable", posthog_path=True)
    assert int(refused["Retry-After"]) >= 1
    monkeypatch.undo()
    # Until the broker answers that the failed publish did not reach it, the id is in flight.
    wait_until(lambda: late_commits.flush() == 0, timeout=10, message="the failed publish resolved")
    assert posthog(client, body).json()["accepted"] == 1
    assert IngestionWarning.objects.count() == 0


def test_429_with_retry_after_counts_every_event_as_rate_limited(
    client: Client, acme: Actor, settings: Any
) -> None:
    settings.RATE_LIMIT_PER_IP_CAPACITY = 1
    settings.RATE_LIMIT_PER_IP_REFILL_PER_SECOND = 0.01
    assert segment(client, acme.key, {"batch": [track()]}).status_code == 200
    refused = segment(client, acme.key, {"batch": [track(), track(), track()]})
    sdk_error(refused, 429, "rate_limited")
    assert int(refused["Retry-After"]) >= 1
    # Reads spend the per-address bucket too: read the ledger from another address.
    totals = client.get("/api/ledger", REMOTE_ADDR="192.0.2.7", **acme.headers).json()["totals"]
    assert (totals["received"], totals["accepted"], totals["rate_limited"]) == (4, 1, 3)


# --- warnings ----------------------------------------------------------------------------------------------


def test_warnings_are_the_tenants_own_newest_first_with_a_cursor(
    client: Client, acme: Actor, globex: Actor
) -> None:
    for name in ("first", "second", "third"):
        segment(client, acme.key, {"batch": [track(name, userId=None)]})
    segment(client, globex.key, {"batch": [track("globex's", userId=None)]})
    page = client.get("/api/ingestion-warnings?limit=2", **acme.headers).json()
    assert [w["event_name"] for w in page["results"]] == ["third", "second"]
    rest = client.get(f"/api/ingestion-warnings?limit=2&cursor={page['next']}", **acme.headers).json()
    assert [w["event_name"] for w in rest["results"]] == ["first"] and rest["next"] is None
    warning = page["results"][0]
    assert set(warning) >= {"time", "protocol", "event_name", "event_id", "code", "field", "message"}
    assert (warning["protocol"], warning["code"], warning["field"]) == (
        "segment",
        "missing_user_id",
        "userId",
    )
    assert (
        client.get("/api/ingestion-warnings", **globex.headers).json()["results"][0]["event_name"]
        == "globex's"
    )
    assert client.get("/api/ingestion-warnings").status_code == 401


def test_warnings_are_kept_30_days(client: Client, acme: Actor) -> None:
    segment(client, acme.key, {"batch": [track("old", userId=None), track("new", userId=None)]})
    IngestionWarning.objects.filter(event_name="old").update(time=utcnow() - timedelta(days=31))
    listed = client.get("/api/ingestion-warnings", **acme.headers).json()["results"]
    assert [w["event_name"] for w in listed] == ["new"]
    assert purge_expired_warnings() == 1
    assert list(IngestionWarning.objects.values_list("event_name", flat=True)) == ["new"]
    entry: Any = settings.CELERY_BEAT_SCHEDULE["compat.purge-expired-warnings"]
    assert (
        entry["task"] == purge_expired_warnings.name and entry["options"]["queue"] == settings.OPS_QUEUE_NAME
    )


# --- custom events in the pipeline ---------------------------------------------------------------------------


def test_custom_events_are_stored_marked_seen_by_the_velocity_rule_and_weigh_nothing(
    client: Client, acme: Actor
) -> None:
    FraudRuleSetting.objects.create(
        tenant=Tenant.objects.get(slug="acme"), rule=Rule.USER_EVENT_RATE, threshold=2, window_seconds=60
    )
    batch = [track("Level Finished", context={"library": {"name": "analytics-python"}}) for _ in range(3)]
    segment(client, acme.key, {"batch": batch})
    [message] = queued_messages()
    batch_process_message(args=(), kwargs=message[1], attempt=1)

    stored = StoredEvent.objects.filter(tenant="acme")
    assert {(e.event_type, e.custom) for e in stored} == {("Level Finished", True)}
    assert stored.count() == 3 and stored[0].context == {"library": {"name": "analytics-python"}}
    [alert] = FraudAlert.objects.filter(tenant="acme", rule=Rule.USER_EVENT_RATE)
    assert alert.event_type == "Level Finished"
    score = UserScore.objects.filter(tenant="acme", user_id="u-1").first()
    assert score is None or score.score_at_epoch == 0.0
    listed = client.get("/api/events?event_type=Level%20Finished", **acme.headers).json()["results"]
    assert len(listed) == 3 and all(e["custom"] for e in listed)
