"""The benchmark's SDK traffic: the load generator's events as Segment `/v1/batch` requests.

The same events as the batched run (same types, properties, users, addresses), written the way
Segment's and RudderStack's SDKs write them (spec names, `messageId`, `sentAt`, a `context`, Basic
auth, gzip), sent by a few client threads like the batched run's, so the two cost figures compare
the endpoints and not the traffic.
"""

from __future__ import annotations

import base64
import gzip
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson

# Our catalog types as Segment spec calls: (call, event name).
_SPEC = {
    "purchase": ("track", "Order Completed"),
    "add_to_cart": ("track", "Product Added"),
    "remove_from_cart": ("track", "Product Removed"),
    "checkout_started": ("track", "Checkout Started"),
    "search": ("track", "Products Searched"),
    "signup": ("track", "Signed Up"),
    "login": ("track", "Signed In"),
    "page_view": ("page", ""),
}
_LIBRARY = {"name": "analytics-python", "version": "2.4.0"}


def segment_message(event: dict[str, Any], client_ip: str) -> dict[str, Any]:
    call, name = _SPEC.get(event["event_type"], ("track", event["event_type"]))
    properties = dict(event.get("properties") or {})
    if event["event_type"] == "purchase":
        properties["total"] = properties.pop("amount")
    message: dict[str, Any] = {
        "type": call,
        "messageId": event["event_id"],
        "userId": event["user_id"],
        "anonymousId": None,
        "timestamp": event["timestamp"],
        "properties": properties,
        "context": {"library": _LIBRARY, "ip": client_ip, "sessionId": event.get("session_id")},
        "integrations": {},
    }
    if call == "track":
        message["event"] = name
    return message


@dataclass
class SdkLoadSummary:
    requests: int = 0
    accepted: int = 0
    other_answers: dict[str, int] = field(default_factory=dict)
    started: float = 0.0
    elapsed: float = 0.0


def run_segment_load(
    *,
    url: str,
    key: str,
    batches: Iterable[list[Any]],
    clients: int,
    compress: bool,
    forwarded_for: bool,
) -> SdkLoadSummary:
    """POST every batch (a list of PlannedEvent) to /v1/batch from `clients` threads."""
    source = iter(batches)
    lock = threading.Lock()
    summary = SdkLoadSummary()
    headers = {
        "Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode(),
        "Content-Type": "application/json",
        "User-Agent": "cloudscale-bench-sdk",
    }
    if compress:
        headers["Content-Encoding"] = "gzip"

    def sender() -> None:
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        with httpx.Client(base_url=url, headers=headers, timeout=60, limits=limits) as client:
            while True:
                with lock:
                    planned = next(source, None)
                if planned is None:
                    return
                sent_at = datetime.now(UTC).isoformat()
                body = orjson.dumps(
                    {"batch": [segment_message(p.event, p.client_ip) for p in planned], "sentAt": sent_at}
                )
                extra = {"X-Forwarded-For": planned[0].client_ip} if forwarded_for else {}
                response = client.post(
                    "/v1/batch", content=gzip.compress(body, 1) if compress else body, headers=extra
                )
                with lock:
                    summary.requests += 1
                    if response.status_code == 200:
                        summary.accepted += int(orjson.loads(response.content)["accepted"])
                    else:
                        status = str(response.status_code)
                        summary.other_answers[status] = summary.other_answers.get(status, 0) + 1

    threads = [threading.Thread(target=sender, name=f"sdk-load-{n}", daemon=True) for n in range(clients)]
    summary.started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    summary.elapsed = time.monotonic() - summary.started
    return summary
