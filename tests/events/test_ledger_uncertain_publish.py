"""The ledger when a publish's outcome cannot be known: the broker applied it, the reply was lost.

On the embedded stack one Redis server is the broker and the shared state. A SIGKILL that lands
after the server wrote a publish's MULTI (LPUSH + wake-up XADD + the publish's receipt) to its
append-only file but before it wrote the reply leaves the message in the broker while the API sees a
dead connection. kombu's publish retries cannot reconnect while the server is down, so the API
answers 503. Before the receipt, the API could not tell whether the broker had the message: the
worker stored it, nothing counted it as accepted until a retry after the reservation expired
published a second copy, and a client that stopped retrying left the ledger short by the batch
for good (the 30-kill fault test, tests/faults/test_faults.py, saw it). Now the API keeps the ids
reserved and asks the broker, once it answers, for the publish's receipt
(`events.publishing.publish_landed`): present, the commit is written late and the retry is a
duplicate; absent, the ids are released and the request counted as refused (docs/decisions.md,
"The ledger under broker kills: publish receipts").

The kill is reproduced exactly with a proxy between the API process and the run's embedded server:
it forwards everything, swallows the reply to the publish's EXEC (the server has applied it), closes
every connection and refuses new ones until the test "restarts" it. Or it drops the publish itself
before the server saw it, and dies the same way.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from django.conf import settings
from django.test import Client
from pytest_django.fixtures import Settings as SettingsWrapper

from cloudscale_project.celery import app
from cloudscale_project.state import state_redis
from events.dedup import RESERVATION_SECONDS, seen_key
from events.ledger import late_commits
from events.tasks import process_batch
from tests.conftest import Actor, wait_until
from tests.events.pipeline_support import take_one_message
from tests.netutil import TcpProxy

pytestmark = [pytest.mark.django_db]

BATCH = 20


class DyingServerProxy(TcpProxy):
    """TCP proxy to the embedded Redis that "SIGKILLs the server" right after it answered the first
    EXEC of a MULTI that carried an LPUSH: the answer is swallowed, every connection is closed, and
    new ones are closed at once until `restart()` (the server coming back from its AOF)."""

    def __init__(self, *, upstream_port: int) -> None:
        self.stays_down = True  # False: back at once, within kombu's publish retries
        self.applies_publish = True  # False: the server dies before it reads the publish
        self.killed = threading.Event()
        self.down = threading.Event()
        self.direct: redis.Redis | None = None
        super().__init__(upstream_port=upstream_port)

    def restart(self) -> None:
        self.down.clear()

    def refusing(self) -> bool:
        return self.down.is_set()

    def connected(self, client: socket.socket, server: socket.socket) -> None:
        armed = threading.Event()  # this connection sent a publish's MULTI
        threading.Thread(target=self._requests, args=(client, server, armed), daemon=True).start()
        threading.Thread(target=self._replies, args=(server, client, armed), daemon=True).start()

    def _requests(self, source: socket.socket, target: socket.socket, armed: threading.Event) -> None:
        while True:
            try:
                chunk = source.recv(65536)
                if not chunk:
                    return
                if not self.killed.is_set() and b"LPUSH" in chunk:
                    if not self.applies_publish:
                        self.killed.set()
                        self._kill()
                        return
                    armed.set()
                target.sendall(chunk)
            except OSError:
                return

    def _replies(self, source: socket.socket, target: socket.socket, armed: threading.Event) -> None:
        pending = b""
        while True:
            try:
                chunk = source.recv(65536)
            except OSError:
                return
            if not chunk:
                self._kill()
                return
            if armed.is_set() and not self.killed.is_set():
                # Hold the MULTI's replies until the EXEC's array (LPUSH, XADD, EXPIRE and the
                # receipt's SET) arrives: the server has applied (and, with appendfsync always,
                # written) the publish. Then "die" without answering.
                pending += chunk
                if b"*4\r\n" in pending:
                    self.killed.set()
                    self._kill()
                    return
                continue
            try:
                target.sendall(chunk)
            except OSError:
                return

    def _kill(self) -> None:
        if self.stays_down:
            self.down.set()
        self.close_all()


@pytest.fixture
def dying_server(settings: SettingsWrapper, monkeypatch: pytest.MonkeyPatch) -> Iterator[DyingServerProxy]:
    """The API process reaches the broker and the shared state through one proxy: one server."""
    if not (
        settings.BROKER_URL.startswith(settings.EMBEDDED_REDIS_URL)
        and settings.REDIS_URL.startswith(settings.EMBEDDED_REDIS_URL)
    ):
        pytest.skip("the broker and the shared state are one server only on the embedded stack")
    proxy = DyingServerProxy(upstream_port=settings.EMBEDDED_REDIS_PORT)
    proxy.direct = redis.Redis.from_url(settings.REDIS_URL)  # the test's own view, past the proxy
    through = settings.EMBEDDED_REDIS_URL.replace(f":{settings.EMBEDDED_REDIS_PORT}", f":{proxy.port}")
    settings.REDIS_URL = settings.REDIS_URL.replace(settings.EMBEDDED_REDIS_URL, through)
    state_redis.cache_clear()
    # The API's publishes (celery's producer pool) go through the proxy too.
    monkeypatch.setattr(
        app.conf, "broker_write_url", settings.BROKER_URL.replace(settings.EMBEDDED_REDIS_URL, through)
    )
    monkeypatch.setattr(app.amqp, "_producer_pool", None)
    yield proxy
    with contextlib.suppress(Exception):
        app.amqp.producer_pool.connections.force_close_all()
    proxy.close()
    state_redis.cache_clear()


def a_batch() -> list[dict[str, Any]]:
    """A batch as the fault suite's clients send it (tests/faults/harness.py)."""
    return [
        {
            "event_id": str(uuid.uuid4()),
            "event_type": "page_view",
            "user_id": f"u-{i}",
            "session_id": "s-1",
            "properties": {"url": f"https://shop.example/p/{i}"},
        }
        for i in range(BATCH)
    ]


def post_batch(client: Client, actor: Actor, events: list[dict[str, Any]]) -> Any:
    return client.post(
        "/api/events/batch",
        data=json.dumps({"events": events}),
        content_type="application/json",
        **actor.headers,
    )


def assert_totals(client: Client, actor: Actor, **expected: int) -> None:
    """The ledger's totals hold `expected`, with nothing pending."""
    totals = ledger_totals(client, actor)
    assert {key: totals[key] for key in [*expected, "pending"]} == {**expected, "pending": 0}, totals


def assert_no_message_waits() -> None:
    waiting = redis.Redis.from_url(settings.CELERY_BROKER_URL).llen(settings.QUEUE_NAME)
    assert waiting == 0, f"{waiting} message(s) still in the ingestion queue"


def ledger_totals(client: Client, actor: Actor) -> dict[str, int]:
    response = client.get("/api/ledger", **actor.headers)
    assert response.status_code == 200, response.content
    totals: dict[str, int] = response.json()["totals"]
    return totals


def test_a_publish_whose_reply_died_with_the_server_is_counted_once_the_broker_shows_its_receipt(
    client: Client, acme: Actor, dying_server: DyingServerProxy
) -> None:
    state = dying_server.direct
    assert state is not None
    events = a_batch()
    ids = [e["event_id"] for e in events]

    first = post_batch(client, acme, events)
    assert dying_server.killed.is_set(), "the server applied the publish and died before answering"
    assert first.status_code == 503 and first.json()["error"]["code"] == "broker_unavailable"
    # The ids stay reserved, not confirmed, and the request is not counted yet: the API waits for
    # the broker to say whether it has the message.
    keys = [seen_key("acme", event_id) for event_id in ids]
    assert state.mget(keys) == [b"reserved"] * BATCH
    assert all(0 < state.ttl(key) <= RESERVATION_SECONDS for key in keys)
    assert late_commits.flush() == 1, "the broker cannot answer while it is down"
    assert not list(state.scan_iter("ledger:acme:*")), "nothing counted yet"

    dying_server.restart()  # the server is back, from its append-only file, with the receipt
    wait_until(lambda: late_commits.flush() == 0, timeout=10, message="the uncertain publish resolved")
    assert state.mget(keys) == [b"1"] * BATCH, "confirmed: the broker has the message"

    # The client's retry is a duplicate: nothing is published a second time.
    retry = post_batch(client, acme, events)
    assert retry.status_code == 202, retry.content
    assert retry.json()["event_ids"] == []
    assert sorted(d["event_id"] for d in retry.json()["duplicates"]) == sorted(ids)

    message = take_one_message()
    args, kwargs, _embed = message.payload
    assert sorted(e["event_id"] for e in kwargs["events"]) == sorted(ids)
    process_batch(*args, **kwargs)
    assert_no_message_waits()

    # Counted once, in the first request's hour, whether or not the client ever retried.
    assert_totals(client, acme, received=2 * BATCH, accepted=BATCH, duplicate=BATCH, rejected=0, stored=BATCH)


def test_a_publish_the_server_died_before_reading_is_released_and_counted_as_refused_once_it_answers(
    client: Client, acme: Actor, dying_server: DyingServerProxy
) -> None:
    """The other half of an uncertain publish: no receipt, so no message. The ids are released and
    the request counted as refused (as a failed publish is at once); the retry is accepted."""
    dying_server.applies_publish = False
    state = dying_server.direct
    assert state is not None
    events = a_batch()
    ids = sorted(e["event_id"] for e in events)

    first = post_batch(client, acme, events)
    assert dying_server.killed.is_set()
    assert first.status_code == 503 and first.json()["error"]["code"] == "broker_unavailable"

    dying_server.restart()
    wait_until(lambda: late_commits.flush() == 0, timeout=10, message="the uncertain publish resolved")
    assert state.mget([seen_key("acme", event_id) for event_id in ids]) == [None] * BATCH, "released"
    assert_no_message_waits()

    retry = post_batch(client, acme, events)
    assert retry.status_code == 202, retry.content
    assert sorted(retry.json()["event_ids"]) == ids
    args, kwargs, _embed = take_one_message().payload
    process_batch(*args, **kwargs)
    assert_totals(client, acme, received=2 * BATCH, accepted=BATCH, duplicate=0, rejected=BATCH, stored=BATCH)


def test_a_publish_whose_reply_died_is_sent_again_by_kombu_when_the_server_is_back_in_time_and_counted_once(
    client: Client, acme: Actor, dying_server: DyingServerProxy
) -> None:
    """The other outcome of the same kill: the server is back within kombu's publish retries, which
    send the message again. Two copies in the broker, one commit (the request's), one stored copy."""
    dying_server.stays_down = False
    events = a_batch()
    ids = sorted(e["event_id"] for e in events)

    response = post_batch(client, acme, events)
    assert dying_server.killed.is_set(), "the server applied the publish and died before answering"
    assert response.status_code == 202, response.content
    assert sorted(response.json()["event_ids"]) == ids

    for _ in range(2):  # the lost publish and kombu's retry: the same events twice
        args, kwargs, _embed = take_one_message().payload
        assert sorted(e["event_id"] for e in kwargs["events"]) == ids
        process_batch(*args, **kwargs)
    totals = ledger_totals(client, acme)
    assert (totals["received"], totals["accepted"], totals["stored"], totals["pending"]) == (
        BATCH,
        BATCH,
        BATCH,
        0,
    )
