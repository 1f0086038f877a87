"""Prometheus metrics (the list, with labels and meaning: docs/api.md, "Metrics").

Two kinds:
- the API processes' own (ingested, duration, rate-limit rejections): prometheus_client objects,
  summed over gunicorn workers by multiprocess mode when PROMETHEUS_MULTIPROC_DIR is set;
- platform-wide figures that workers and beat produce (processed, dead letters, fraud, queue
  depth, concurrency target): kept in Redis, so one scrape of any API process shows the whole
  platform whichever worker did the work. `PlatformCollector` reads them at scrape time.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Iterable, Iterator, Mapping

import redis
from django.conf import settings
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from cloudscale_project.state import state_redis

logger = logging.getLogger(__name__)

EVENTS_INGESTED = Counter(
    "cloudscale_events_ingested_total",
    "Events accepted by the API (durably published).",
    ["event_type", "tenant_id"],
)
INGESTION_DURATION = Histogram(
    "cloudscale_ingestion_duration_seconds",
    "Time from request start to durable publish, per event type of the request.",
    ["event_type"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
RATE_LIMIT_REJECTIONS = Counter(
    "cloudscale_rate_limit_rejections_total",
    "Requests answered 429.",
)

# Platform-wide counters: name -> (help, label names).
PLATFORM_COUNTERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "cloudscale_events_processed_total": (
        "Events the workers finished, by outcome.",
        ("event_type", "outcome"),
    ),
    "cloudscale_dead_letters_total": ("Dead letters written, by reason.", ("reason",)),
    "cloudscale_fraud_detected_total": ("Fraud alerts raised.", ("event_type",)),
    "cloudscale_cart_abandonments_total": ("Cart abandonments recorded.", ()),
}
PLATFORM_GAUGES: dict[str, str] = {
    "cloudscale_queue_depth": "Messages waiting in the ingestion queue, sampled by beat.",
    "cloudscale_worker_concurrency_target": "Worker concurrency the backpressure policy asks for.",
}
# Platform-wide gauges with labels: name -> (help, label names); one value per label set.
PLATFORM_LABELED_GAUGES: dict[str, tuple[str, tuple[str, ...]]] = {
    "cloudscale_worker_last_heartbeat_timestamp_seconds": (
        "Unix time of each worker's last heartbeat (ops.heartbeat); a stale one means the worker is down.",
        ("worker",),
    ),
    "cloudscale_worker_pool_processes": (
        "Pool processes of each worker at its last heartbeat (the autoscaler moves it toward the target).",
        ("worker",),
    ),
}
_COUNTER_KEY = "metrics:counter:{name}"
_GAUGE_KEY = "metrics:gauges"
_LABELED_GAUGE_KEY = "metrics:gauge:{name}"


_redis = state_redis  # one client (and connection pool) per process


def _field(labels: Mapping[str, str]) -> str:
    """A label set's hash field: its JSON with sorted keys. The workers count the same few label sets
    for every message, so the text is kept per set of items (a few µs of `json.dumps` each time)."""
    return _field_of(tuple(sorted(labels.items())))


@functools.lru_cache(maxsize=4096)
def _field_of(items: tuple[tuple[str, str], ...]) -> str:
    return json.dumps(dict(items), separators=(",", ":"))


def platform_incr(name: str, labels: Mapping[str, str] | None = None, amount: int = 1) -> None:
    platform_incr_many(name, [(labels or {}, amount)])


def platform_incr_many(name: str, increments: Iterable[tuple[Mapping[str, str], int]]) -> None:
    """Add to a platform counter, one round trip for a whole batch of label sets."""
    if name not in PLATFORM_COUNTERS:
        raise KeyError(f"unknown platform counter {name!r}")
    pipe = _redis().pipeline(transaction=False)
    for labels, amount in increments:
        if amount:
            pipe.hincrby(_COUNTER_KEY.format(name=name), _field(labels), amount)
    try:
        pipe.execute()
    except redis.RedisError:
        # Metrics must never fail the work they describe; the ledger, not metrics, proves delivery.
        logger.warning("could not record metric %s", name, exc_info=True)


def platform_set_gauge(name: str, value: float) -> None:
    if name not in PLATFORM_GAUGES:
        raise KeyError(f"unknown platform gauge {name!r}")
    try:
        _redis().hset(_GAUGE_KEY, name, value)
    except redis.RedisError:
        logger.warning("could not record gauge %s", name, exc_info=True)


def platform_set_labeled_gauge(name: str, labels: Mapping[str, str], value: float) -> None:
    if name not in PLATFORM_LABELED_GAUGES:
        raise KeyError(f"unknown platform labeled gauge {name!r}")
    try:
        _redis().hset(_LABELED_GAUGE_KEY.format(name=name), _field(labels), value)
    except redis.RedisError:
        logger.warning("could not record gauge %s", name, exc_info=True)


def platform_remove_labeled_gauges(name: str, *, labels: Mapping[str, str] | None = None,
                                   below: float | None = None) -> int:  # fmt: skip
    """Drop one label set, and/or every label set whose value is below `below`; returns how many.

    For timestamp gauges: a worker that stops cleanly removes its series, and old series of
    workers that vanished (containers get new host names) are forgotten, so they do not pile up.
    """
    if name not in PLATFORM_LABELED_GAUGES:
        raise KeyError(f"unknown platform labeled gauge {name!r}")
    key = _LABELED_GAUGE_KEY.format(name=name)
    try:
        client = _redis()
        fields = [_field(labels)] if labels is not None else []
        if below is not None:
            fields += [
                f.decode() if isinstance(f, bytes) else str(f)
                for f, v in client.hgetall(key).items()
                if float(v) < below
            ]
        return int(client.hdel(key, *fields)) if fields else 0
    except redis.RedisError:
        logger.warning("could not prune gauge %s", name, exc_info=True)
        return 0


class FrozenLabels(dict[str, str]):
    """A label set usable as a dict key."""

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(tuple(sorted(self.items())))


def platform_labeled_gauge_values(name: str) -> dict[FrozenLabels, float]:
    """Every label set of a labeled platform gauge with its value. Raises redis errors."""
    if name not in PLATFORM_LABELED_GAUGES:
        raise KeyError(f"unknown platform labeled gauge {name!r}")
    raw = _redis().hgetall(_LABELED_GAUGE_KEY.format(name=name))
    return {FrozenLabels(json.loads(k)): float(v) for k, v in raw.items()}


def platform_gauge_value(name: str) -> float | None:
    """The current value of a platform gauge, None if never set. Raises redis errors."""
    if name not in PLATFORM_GAUGES:
        raise KeyError(f"unknown platform gauge {name!r}")
    raw = _redis().hget(_GAUGE_KEY, name)
    return float(raw) if raw is not None else None


def platform_counter_values(name: str) -> dict[FrozenLabels, float]:
    """Every label set of a platform counter with its value. Raises redis errors."""
    if name not in PLATFORM_COUNTERS:
        raise KeyError(f"unknown platform counter {name!r}")
    raw = _redis().hgetall(_COUNTER_KEY.format(name=name))
    return {FrozenLabels(json.loads(k)): float(v) for k, v in raw.items()}


class PlatformCollector(Collector):
    """Reads the platform-wide figures from Redis at scrape time."""

    def collect(self) -> Iterator[Metric]:
        client = _redis()
        pipe = client.pipeline(transaction=False)
        for name in PLATFORM_COUNTERS:
            pipe.hgetall(_COUNTER_KEY.format(name=name))
        pipe.hgetall(_GAUGE_KEY)
        for name in PLATFORM_LABELED_GAUGES:
            pipe.hgetall(_LABELED_GAUGE_KEY.format(name=name))
        try:
            results = pipe.execute()
        except redis.RedisError:
            logger.warning("platform metrics unavailable", exc_info=True)
            return
        n_counters = len(PLATFORM_COUNTERS)
        counters, gauges, labeled_gauges = (
            results[:n_counters],
            results[n_counters],
            results[n_counters + 1 :],
        )
        for (name, (help_text, label_names)), values in zip(PLATFORM_COUNTERS.items(), counters, strict=True):
            family = CounterMetricFamily(name.removesuffix("_total"), help_text, labels=list(label_names))
            for raw_labels, raw_value in values.items():
                labels = json.loads(raw_labels)
                family.add_metric([str(labels.get(n, "")) for n in label_names], float(raw_value))
            yield family
        for name, help_text in PLATFORM_GAUGES.items():
            family_g = GaugeMetricFamily(name, help_text)
            raw = gauges.get(name.encode())
            if raw is not None:
                family_g.add_metric([], float(raw))
            yield family_g
        for (name, (help_text, label_names)), values in zip(
            PLATFORM_LABELED_GAUGES.items(), labeled_gauges, strict=True
        ):
            family_l = GaugeMetricFamily(name, help_text, labels=list(label_names))
            for raw_labels, raw_value in values.items():
                labels = json.loads(raw_labels)
                family_l.add_metric([str(labels.get(n, "")) for n in label_names], float(raw_value))
            yield family_l


def render_metrics() -> bytes:
    """The text of one scrape: this API's own metrics (all workers) plus the platform's."""
    registry = CollectorRegistry()
    if settings.PROMETHEUS_MULTIPROC_DIR:
        MultiProcessCollector(registry)
    else:
        for collector in (EVENTS_INGESTED, INGESTION_DURATION, RATE_LIMIT_REJECTIONS):
            registry.register(collector)
    registry.register(PlatformCollector())
    return generate_latest(registry)
