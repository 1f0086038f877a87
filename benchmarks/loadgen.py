"""Synthetic traffic over HTTP for `manage.py loadgen` and the benchmarks.

Two halves, both plain (no Django, so `benchmarks/run.py` imports them as they are):

- `TrafficGenerator`: an endless, seedable stream of realistic sessions (browse, search, add to
  cart, purchase, abandon a cart or a checkout, sign up) plus a few fraud-like bursts (many
  purchases or failed logins by one user, many users from one address). Every event is valid for
  its catalog type (events/schemas.py) unless invalid ones are asked for. Sessions interleave, as
  real traffic does, and every event carries a client event id, so each receipt names a known event.
- `run_load`: sends the events as single posts (`POST /api/events`) or batches
  (`POST /api/events/batch`) from a pool of threads, each with its own keep-alive connection, at a
  target rate, and returns a `LoadSummary` with the receipt of every event (accepted, duplicate,
  rejected and why) and the latency of every request.
"""

from __future__ import annotations

import contextlib
import math
import random
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
from tqdm import tqdm

from cloudscale_project.timeutil import isoformat_z


def max_batch() -> int:
    """The API's batch limit, from the settings the API itself reads."""
    from django.conf import settings

    return int(settings.MAX_BATCH_EVENTS)


Event = dict[str, Any]

SINGLE_PATH = "/api/events"
BATCH_PATH = "/api/events/batch"
USER_AGENT = "cloudscale-loadgen/1"

# Reasons an event did not get a 202 receipt, besides "<status> <error code>" of a refused request.
REASON_INVALID = "validation_error (receipt)"
REASON_NO_RESPONSE = "no response"

# How many sessions are open at once: their events interleave in the stream.
_OPEN_SESSIONS = 24
# Share of returning-user sessions that belong to the few regulars (the first `_REGULARS` users).
_REGULARS = 20
_REGULARS_SHARE = 0.1
# Seconds of event time between two events of a session (a person reading, typing, clicking).
_THINK_SECONDS = (2.0, 45.0)
# A retried 429/503 waits Retry-After; without one (or after no response) this backoff, capped.
_RETRY_BACKOFF_SECONDS = 0.5
_RETRY_BACKOFF_CAP_SECONDS = 10.0
# A paced sender that fell behind may catch up this much, not more (no unbounded burst).
_MAX_PACING_DEBT_SECONDS = 1.0

_PAGES = (
    "/", "/sale", "/new", "/category/shoes", "/category/jackets", "/category/bags", "/account",
    "/help/shipping", "/help/returns", "/blog/winter-guide",
)  # fmt: skip
_SEARCHES = (
    "running shoes", "rain jacket", "wool socks", "backpack 30l", "trail shoes women", "gift card",
    "down vest", "water bottle", "headlamp", "merino hoodie", "size guide", "sale boots",
)  # fmt: skip
_REFERRERS = ("https://www.google.com/", "https://duckduckgo.com/", "https://news.example/", "", "")
_CURRENCIES = ("EUR", "EUR", "EUR", "USD", "GBP", "CHF")
_LOGIN_METHODS = ("password", "password", "google", "apple", "magic_link")
_FAILED_LOGIN_REASONS = ("wrong_password", "unknown_user", "locked")

# (session kind, weight) of ordinary visitors.
_SESSION_KINDS = (
    ("browse", 34),
    ("cart_abandoned", 20),
    ("purchase", 24),
    ("checkout_abandoned", 10),
    ("signup", 9),
    ("returning_login", 3),
)
_FRAUD_KINDS = ("purchase_burst", "login_failed_burst", "shared_address_burst")


@dataclass(frozen=True)
class Product:
    product_id: str
    price: float
    name: str


@dataclass
class PlannedEvent:
    """An event to send and the client address it comes from (sent as X-Forwarded-For on request)."""

    event: Event
    client_ip: str


class TrafficGenerator:
    """Endless realistic traffic; the same seed gives the same sessions (ids and times aside)."""

    def __init__(
        self,
        *,
        seed: int | None = None,
        users: int = 2_000,
        fraud_ratio: float = 0.02,
        invalid_ratio: float = 0.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        if not 0 <= fraud_ratio <= 1 or not 0 <= invalid_ratio <= 1:
            raise ValueError("fraud_ratio and invalid_ratio are fractions between 0 and 1")
        self._rng = random.Random(seed)
        self._users = max(1, users)
        self._fraud_ratio = fraud_ratio
        self._invalid_ratio = invalid_ratio
        self._clock = clock
        self._run = uuid.UUID(int=self._rng.getrandbits(128)).hex[:6]
        self._products = [
            Product(f"p-{n:04d}", round(self._rng.uniform(4.0, 240.0), 2), f"product {n}") for n in range(400)
        ]
        self._orders = 0
        self._new_users = 0

    # --- the stream ---------------------------------------------------------------------------------

    def stream(self) -> Iterator[PlannedEvent]:
        """Events of `_OPEN_SESSIONS` sessions at a time, interleaved at random."""
        open_sessions: list[Iterator[PlannedEvent]] = []
        while True:
            while len(open_sessions) < _OPEN_SESSIONS:
                open_sessions.append(iter(self.session()))
            index = self._rng.randrange(len(open_sessions))
            planned = next(open_sessions[index], None)
            if planned is None:
                open_sessions.pop(index)
                continue
            if self._invalid_ratio and self._rng.random() < self._invalid_ratio:
                planned.event = self._spoil(planned.event)
            yield planned

    def take(self, n: int) -> list[PlannedEvent]:
        stream = self.stream()
        return [next(stream) for _ in range(n)]

    # --- sessions ------------------------------------------------------------------------------------

    def session(self) -> list[PlannedEvent]:
        """One visit: (event type, properties) steps of one kind, stamped with ids and times."""
        rng = self._rng
        if rng.random() < self._fraud_ratio:
            kind = rng.choice(_FRAUD_KINDS)
        else:
            kind = rng.choices([k for k, _ in _SESSION_KINDS], weights=[w for _, w in _SESSION_KINDS])[0]
        ip = self._address()
        if kind == "shared_address_burst":
            return self._shared_address_burst(ip)
        user_id = self._new_user() if kind == "signup" else self._known_user()
        steps = getattr(self, f"_{kind}")()
        return self._stamp(steps, user_id=user_id, ip=ip)

    def _browse(self) -> list[tuple[str, dict[str, Any]]]:
        steps = [self._page_view(referrer=True)]
        for _ in range(self._rng.randint(1, 6)):
            roll = self._rng.random()
            if roll < 0.25:
                steps.append(self._search())
            elif roll < 0.45:
                steps.append(self._click())
            steps.append(self._page_view())
        return steps

    def _cart_abandoned(self) -> list[tuple[str, dict[str, Any]]]:
        steps = [self._page_view(referrer=True), self._search(), self._page_view()]
        cart = [self._add_to_cart() for _ in range(self._rng.randint(1, 3))]
        steps += cart
        if len(cart) > 1 and self._rng.random() < 0.4:
            steps.append(("remove_from_cart", dict(cart[0][1])))
        steps.append(self._page_view())
        return steps

    def _purchase(self) -> list[tuple[str, dict[str, Any]]]:
        steps = [self._page_view(referrer=True)]
        if self._rng.random() < 0.5:
            steps.append(("login", {"method": self._rng.choice(_LOGIN_METHODS)}))
        steps += [self._search(), self._page_view()]
        cart = [self._add_to_cart() for _ in range(self._rng.randint(1, 4))]
        steps += cart
        steps += [self._checkout(cart), self._purchase_step(cart)]
        return steps

    def _checkout_abandoned(self) -> list[tuple[str, dict[str, Any]]]:
        steps = [self._page_view(referrer=True), self._search()]
        cart = [self._add_to_cart() for _ in range(self._rng.randint(1, 3))]
        return [*steps, *cart, self._checkout(cart)]

    def _signup(self) -> list[tuple[str, dict[str, Any]]]:
        plan = self._rng.choice(("free", "free", "plus"))
        return [
            self._page_view(referrer=True),
            ("signup", {"plan": plan, "newsletter": self._rng.random() < 0.3}),
            ("login", {"method": "password"}),
            self._page_view(),
        ]

    def _returning_login(self) -> list[tuple[str, dict[str, Any]]]:
        steps: list[tuple[str, dict[str, Any]]] = [self._page_view(path="/account")]
        if self._rng.random() < 0.3:  # a typo, then the right password
            steps.append(("login_failed", {"reason": "wrong_password"}))
        return [*steps, ("login", {"method": self._rng.choice(_LOGIN_METHODS)}), self._page_view()]

    # Fraud-like bursts (the default rules of docs/api.md, "Fraud rules": > 3 purchases / 10 min,
    # > 5 login_failed / 5 min by one user, > 10 users from one address / 10 min).

    def _purchase_burst(self) -> list[tuple[str, dict[str, Any]]]:
        steps = [("login", {"method": "password"})]
        for _ in range(self._rng.randint(5, 8)):
            cart = [self._add_to_cart()]
            steps += [*cart, self._purchase_step(cart)]
        return steps

    def _login_failed_burst(self) -> list[tuple[str, dict[str, Any]]]:
        count = self._rng.randint(7, 12)
        return [("login_failed", {"reason": self._rng.choice(_FAILED_LOGIN_REASONS)}) for _ in range(count)]

    def _shared_address_burst(self, ip: str) -> list[PlannedEvent]:
        """Many fresh accounts from one address within minutes (sign-up or card-testing farms)."""
        planned: list[PlannedEvent] = []
        for _ in range(self._rng.randint(12, 20)):
            steps: list[tuple[str, dict[str, Any]]] = [
                ("signup", {"plan": "free", "newsletter": False}),
                ("login", {"method": "password"}),
            ]
            planned += self._stamp(steps, user_id=self._new_user(), ip=ip, think=(0.5, 5.0))
        return planned

    # --- steps ----------------------------------------------------------------------------------------

    def _page_view(self, *, referrer: bool = False, path: str | None = None) -> tuple[str, dict[str, Any]]:
        if path is None:
            product = self._rng.random() < 0.4
            path = f"/products/{self._product().product_id}" if product else self._rng.choice(_PAGES)
        properties: dict[str, Any] = {
            "url": f"https://shop.example{path}",
            "title": path.strip("/") or "home",
        }
        if referrer:
            properties["referrer"] = self._rng.choice(_REFERRERS)
        return "page_view", properties

    def _search(self) -> tuple[str, dict[str, Any]]:
        return "search", {"query": self._rng.choice(_SEARCHES), "results": self._rng.randint(0, 120)}

    def _click(self) -> tuple[str, dict[str, Any]]:
        element = self._rng.choice(("banner", "filter:size", "filter:color", "recommendation", "nav"))
        return "click", {"element": element, "position": self._rng.randint(1, 12)}

    def _add_to_cart(self) -> tuple[str, dict[str, Any]]:
        product = self._product()
        return "add_to_cart", {
            "product_id": product.product_id,
            "quantity": self._rng.choice((1, 1, 1, 2, 3)),
            "price": product.price,
            "name": product.name,
        }

    def _checkout(self, cart: list[tuple[str, dict[str, Any]]]) -> tuple[str, dict[str, Any]]:
        return "checkout_started", {"items": len(cart), "cart_value": _cart_value(cart)}

    def _purchase_step(self, cart: list[tuple[str, dict[str, Any]]]) -> tuple[str, dict[str, Any]]:
        self._orders += 1
        items = [
            {"product_id": p["product_id"], "quantity": p["quantity"], "price": p["price"]} for _, p in cart
        ]
        return "purchase", {
            "order_id": f"o-{self._run}-{self._orders}",
            "amount": _cart_value(cart),
            "currency": self._rng.choice(_CURRENCIES),
            "items": items,
        }

    # --- ids, times, addresses --------------------------------------------------------------------------

    def _stamp(
        self,
        steps: list[tuple[str, dict[str, Any]]],
        *,
        user_id: str,
        ip: str,
        think: tuple[float, float] = _THINK_SECONDS,
    ) -> list[PlannedEvent]:
        """Event ids, a session id, and event times that end now and step back by think times."""
        session_id = f"s-{uuid.UUID(int=self._rng.getrandbits(128)).hex[:16]}"
        offsets = [0.0]
        for _ in steps[1:]:
            offsets.append(offsets[-1] + self._rng.uniform(*think))
        start = self._clock() - timedelta(seconds=offsets[-1])
        return [
            PlannedEvent(
                event={
                    "event_id": str(uuid.uuid4()),
                    "event_type": event_type,
                    "user_id": user_id,
                    "session_id": session_id,
                    "timestamp": isoformat_z(start + timedelta(seconds=offset)),
                    "properties": properties,
                },
                client_ip=ip,
            )
            for (event_type, properties), offset in zip(steps, offsets, strict=True)
        ]

    def _known_user(self) -> str:
        # A few regulars visit far more often than the rest, as in real shops.
        if self._rng.random() < _REGULARS_SHARE:
            return f"u-{self._rng.randrange(min(_REGULARS, self._users))}"
        return f"u-{self._rng.randrange(self._users)}"

    def _new_user(self) -> str:
        self._new_users += 1
        return f"u-new-{self._run}-{self._new_users}"

    def _product(self) -> Product:
        return self._rng.choice(self._products)

    def _address(self) -> str:
        return f"10.{self._rng.randrange(256)}.{self._rng.randrange(256)}.{self._rng.randrange(1, 255)}"

    def _spoil(self, event: Event) -> Event:
        """An invalid variant of an event (the API must reject it with a receipt, never a 500)."""
        spoiled = dict(event, properties=dict(event["properties"]))
        how = self._rng.randrange(5)
        if how == 0:
            spoiled["event_type"] = "teleport"
        elif how == 1:
            spoiled["user_id"] = ""
        elif how == 2:
            spoiled["timestamp"] = "yesterday at noon"
        elif how == 3:
            spoiled["event_type"], spoiled["properties"] = "add_to_cart", {"product_id": "p-1", "quantity": 0}
        else:
            spoiled["event_type"] = "purchase"
            spoiled["properties"] = {"order_id": "o-x", "amount": -5, "currency": "euro"}
        return spoiled


def _cart_value(cart: list[tuple[str, dict[str, Any]]]) -> float:
    return round(sum(p["price"] * p["quantity"] for _, p in cart), 2)


# --- sending -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadConfig:
    url: str
    key: str
    events: int
    batch: int = 1
    rate: float = 0.0  # events per second over all threads; 0 = as fast as the server answers
    concurrency: int = 8
    timeout: float = 10.0
    retries: int = 0  # resend a request refused with 429/503 or left without a response
    forwarded_for: bool = False  # send each event's client address as X-Forwarded-For
    user_agent: str = USER_AGENT
    path: str | None = None  # another endpoint than the API's (the benchmarks' latency floor)

    def __post_init__(self) -> None:
        if self.events < 0:
            raise ValueError("events must be ≥ 0")
        if not 1 <= self.batch <= max_batch():
            raise ValueError(f"batch must be between 1 and {max_batch()} (the API's limit)")
        if self.rate < 0 or self.concurrency < 1 or self.retries < 0 or self.timeout <= 0:
            raise ValueError("rate ≥ 0, concurrency ≥ 1, retries ≥ 0 and timeout > 0 are required")


@dataclass
class RequestOutcome:
    """What one request (after its retries) said about each of its events."""

    accepted: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    rejected: Counter[str] = field(default_factory=Counter)
    statuses: Counter[str] = field(default_factory=Counter)  # one per attempt
    latencies: list[float] = field(default_factory=list)  # seconds, per attempt that got a response
    retries: int = 0


@dataclass
class LoadSummary:
    url: str
    batch: int
    concurrency: int
    rate: float
    sent: int = 0
    requests: int = 0
    retries: int = 0
    accepted_ids: list[str] = field(default_factory=list)
    duplicate_ids: list[str] = field(default_factory=list)
    rejected: Counter[str] = field(default_factory=Counter)
    statuses: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    started: float = 0.0  # time.monotonic() of the first request
    elapsed: float = 0.0
    interrupted: bool = False

    @property
    def accepted(self) -> int:
        return len(self.accepted_ids)

    @property
    def duplicates(self) -> int:
        return len(self.duplicate_ids)

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())

    @property
    def receipt_ids(self) -> list[str]:
        """Every event id that got a 202 receipt (accepted, or a duplicate of one accepted before)."""
        return [*self.accepted_ids, *self.duplicate_ids]

    def latency_ms(self, percentile: float) -> float | None:
        return nearest_rank_percentile(self.latencies, percentile) * 1000 if self.latencies else None

    def add(self, sent: int, outcome: RequestOutcome) -> None:
        self.sent += sent
        self.requests += sum(outcome.statuses.values())
        self.retries += outcome.retries
        self.accepted_ids += outcome.accepted
        self.duplicate_ids += outcome.duplicates
        self.rejected.update(outcome.rejected)
        self.statuses.update(outcome.statuses)
        self.latencies += outcome.latencies

    def as_dict(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "batch": self.batch,
            "concurrency": self.concurrency,
            "rate": self.rate,
            "sent": self.sent,
            "requests": self.requests,
            "retries": self.retries,
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "rejected": self.rejected_total,
            "rejected_by_reason": dict(self.rejected),
            "statuses": dict(self.statuses),
            "status_429": self.statuses.get("429", 0),
            "status_503": self.statuses.get("503", 0),
            "latency_ms": {f"p{p}": self.latency_ms(p) for p in (50, 95, 99)},
            "elapsed_s": self.elapsed,
            "events_per_s": self.sent / self.elapsed if self.elapsed else None,
            "interrupted": self.interrupted,
        }


def nearest_rank_percentile(values: list[float], percentile: float) -> float:
    """Nearest-rank percentile (the value below which `percentile` % of the samples fall)."""
    ordered = sorted(values)
    rank = max(1, math.ceil(percentile / 100 * len(ordered)))
    return ordered[rank - 1]


class _Pacer:
    """Hands out send times so all threads together keep `rate` events per second."""

    def __init__(self, rate: float) -> None:
        self._rate = rate
        self._next: float | None = None
        self._lock = threading.Lock()

    def wait(self, n: int, stop: threading.Event) -> None:
        if not self._rate:
            return
        with self._lock:
            now = time.monotonic()
            if self._next is None or self._next < now - _MAX_PACING_DEBT_SECONDS:
                self._next = now
            slot = self._next
            self._next += n / self._rate
        if slot > now:
            stop.wait(slot - now)


def plan_requests(planned: Iterable[PlannedEvent], *, total: int, batch: int) -> Iterator[list[PlannedEvent]]:
    """The first `total` events, cut into requests of `batch`."""
    chunk: list[PlannedEvent] = []
    for count, item in enumerate(planned):
        if count >= total:
            break
        chunk.append(item)
        if len(chunk) == batch:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _error_code(response: httpx.Response) -> str:
    with contextlib.suppress(ValueError, TypeError, AttributeError, KeyError):
        return str(orjson.loads(response.content)["error"]["code"])
    return "unexpected response"


def _retry_wait(response: httpx.Response | None, attempt: int) -> float:
    if response is not None:
        with contextlib.suppress(TypeError, ValueError):
            return min(float(response.headers.get("Retry-After", "")), _RETRY_BACKOFF_CAP_SECONDS)
    step = min(_RETRY_BACKOFF_CAP_SECONDS, _RETRY_BACKOFF_SECONDS * 2**attempt)
    return step / 2 + random.random() * step / 2


def _read_receipts(response: httpx.Response, events: list[Event], *, single: bool) -> RequestOutcome:
    """Per-event outcome of an answered request."""
    outcome = RequestOutcome()
    status = response.status_code
    body: Any = None
    with contextlib.suppress(ValueError):
        body = orjson.loads(response.content)
    if status == 202 and isinstance(body, dict):
        if single:
            target = outcome.duplicates if body.get("status") == "duplicate" else outcome.accepted
            target.append(str(body.get("event_id")))
        else:
            outcome.accepted += [str(e) for e in body.get("event_ids", [])]
            outcome.duplicates += [str(d["event_id"]) for d in body.get("duplicates", [])]
            if body.get("rejected"):
                outcome.rejected[REASON_INVALID] += len(body["rejected"])
        return outcome
    if status == 400 and not single and isinstance(body, dict) and "rejected" in body:
        outcome.rejected[REASON_INVALID] += len(events)  # no event of the batch was valid
        return outcome
    outcome.rejected[f"{status} {_error_code(response)}"] += len(events)
    return outcome


def send_request(
    client: httpx.Client, planned: list[PlannedEvent], config: LoadConfig, stop: threading.Event
) -> RequestOutcome:
    """POST one request (single or batch), resending it on 429/503/no response up to `retries` times."""
    single = config.batch == 1
    path = config.path or (SINGLE_PATH if single else BATCH_PATH)
    events = [p.event for p in planned]
    headers = {"X-Forwarded-For": planned[0].client_ip} if config.forwarded_for else {}
    statuses: Counter[str] = Counter()
    latencies: list[float] = []
    attempt = 0
    failure = REASON_NO_RESPONSE
    while True:
        sent_at = isoformat_z(datetime.now(UTC))  # the client clock at send time, for skew correction
        for event in events:
            event["sent_at"] = sent_at
        body = orjson.dumps(events[0] if single else {"events": events})
        response: httpx.Response | None = None
        started = time.perf_counter()
        try:
            response = client.post(path, content=body, headers=headers)
            latencies.append(time.perf_counter() - started)
            statuses[str(response.status_code)] += 1
            retryable = response.status_code in {429, 503}
        except httpx.TransportError as exc:
            failure = f"{REASON_NO_RESPONSE} ({type(exc).__name__})"
            statuses[failure] += 1
            retryable = True
        if not retryable or attempt >= config.retries or stop.is_set():
            break
        stop.wait(_retry_wait(response, attempt))
        attempt += 1
    if response is None:
        # The request may or may not have been accepted: no receipt, so not counted as stored.
        outcome = RequestOutcome()
        outcome.rejected[failure] += len(events)
    else:
        outcome = _read_receipts(response, events, single=single)
    outcome.statuses, outcome.latencies, outcome.retries = statuses, latencies, attempt
    return outcome


def run_load(
    config: LoadConfig,
    *,
    requests: Iterable[list[PlannedEvent]] | None = None,
    generator: TrafficGenerator | None = None,
    progress: bool | None = None,
) -> LoadSummary:
    """Send `config.events` events (or the given prepared requests) and collect every receipt.

    `progress=None` shows a bar only on a terminal. Ctrl-C stops sending: requests in flight finish
    and the summary covers what was sent (`interrupted`).
    """
    source = iter(
        requests
        if requests is not None
        else plan_requests(
            (generator or TrafficGenerator()).stream(), total=config.events, batch=config.batch
        )
    )
    summary = LoadSummary(
        url=config.url, batch=config.batch, concurrency=config.concurrency, rate=config.rate
    )
    lock = threading.Lock()
    stop = threading.Event()
    pacer = _Pacer(config.rate)
    bar = tqdm(
        total=config.events, unit="ev", disable=None if progress is None else not progress, file=sys.stderr
    )
    headers = {
        "Authorization": f"Bearer {config.key}",
        "Content-Type": "application/json",
        "User-Agent": config.user_agent,
    }

    def sender() -> None:
        # One client (one keep-alive connection) per thread: the pool is the set of threads.
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        with httpx.Client(
            base_url=config.url, headers=headers, timeout=config.timeout, limits=limits
        ) as client:
            while not stop.is_set():
                with lock:
                    planned = next(source, None)
                if planned is None:
                    return
                pacer.wait(len(planned), stop)
                outcome = send_request(client, planned, config, stop)
                with lock:
                    summary.add(len(planned), outcome)
                    bar.update(len(planned))

    threads = [
        threading.Thread(target=sender, name=f"loadgen-{n}", daemon=True) for n in range(config.concurrency)
    ]
    summary.started = time.monotonic()
    for thread in threads:
        thread.start()
    try:
        for thread in threads:
            while thread.is_alive():
                thread.join(timeout=0.2)  # joining in slices keeps Ctrl-C deliverable
    except KeyboardInterrupt:
        summary.interrupted = True
        stop.set()
        for thread in threads:
            thread.join()
    summary.elapsed = time.monotonic() - summary.started
    bar.close()
    return summary


# --- the report -------------------------------------------------------------------------------------------


def format_summary(summary: LoadSummary, *, key_source: str | None = None) -> str:
    """The table `manage.py loadgen` prints at the end."""
    rate = f"{summary.sent / summary.elapsed:,.0f} events/s" if summary.elapsed else "-"
    mode = "single posts" if summary.batch == 1 else f"batches of {summary.batch}"
    target = f", target {summary.rate:,.0f} events/s" if summary.rate else ""
    title = f"loadgen → {summary.url}" + (f" (key: {key_source})" if key_source else "")
    rows: list[tuple[str, str]] = [
        ("mode", f"{mode}, {summary.concurrency} concurrent clients{target}"),
        ("elapsed", f"{summary.elapsed:.2f} s ({rate})"),
        ("requests", f"{summary.requests:,} ({summary.retries:,} retries)"),
        ("events sent", f"{summary.sent:,}"),
        ("  accepted (202)", f"{summary.accepted:,}"),
        ("  duplicates (202)", f"{summary.duplicates:,}"),
        ("  rejected", f"{summary.rejected_total:,}"),
    ]
    rows += [(f"    {reason}", f"{n:,}") for reason, n in sorted(summary.rejected.items())]
    rows.append(
        ("responses by status", ", ".join(f"{s}: {n:,}" for s, n in sorted(summary.statuses.items())) or "-")
    )
    rows.append(("429 rate limited", f"{summary.statuses.get('429', 0):,}"))
    rows.append(("503 broker unavailable", f"{summary.statuses.get('503', 0):,}"))
    if summary.latencies:
        p50, p95, p99 = (summary.latency_ms(p) for p in (50, 95, 99))
        rows.append(("latency", f"p50 {p50:.1f} ms, p95 {p95:.1f} ms, p99 {p99:.1f} ms"))
    if summary.interrupted:
        rows.append(("interrupted", "yes: stopped by Ctrl-C; the counts cover what was sent"))
    width = max(len(name) for name, _ in rows)
    lines = [title, "-" * len(title), *(f"{name:<{width}}  {value}" for name, value in rows)]
    return "\n".join(lines)


def enriched_events(
    n: int, *, tenant: str, one_address: bool = False, user_agent: str = "bench"
) -> list[dict[str, Any]]:
    """`n` events of the traffic as the API would publish them (its own validation and enrichment),
    made in advance: one address per session, or all from 127.0.0.1 (`one_address`). Needs Django
    set up."""
    from cloudscale_project.timeutil import utcnow
    from events.enrichment import enrich_event
    from events.schemas import validate_event

    enriched = []
    for planned in TrafficGenerator(seed=11).take(n):
        valid, errors = validate_event(planned.event)
        assert valid is not None, errors
        enriched.append(
            enrich_event(
                valid,
                tenant=tenant,
                received_at=utcnow(),
                ip="127.0.0.1" if one_address else planned.client_ip,
                user_agent=user_agent,
                correlation_id=str(uuid.uuid4()),
            )
        )
    return enriched
