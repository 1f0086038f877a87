"""Validator cost per event: DRF serializers vs the pydantic models the API uses (one process, side by side).

Example: .venv/bin/python benchmarks/validation.py
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "cloudscale_project.settings")
import django

django.setup()

from rest_framework import serializers  # noqa: E402

from events.schemas import validate_event  # noqa: E402

BATCH = [
    {
        "event_id": f"e-{i}",
        "event_type": "purchase",
        "user_id": f"u-{i % 50}",
        "session_id": "s-1",
        "timestamp": "2026-11-26T10:00:00Z",
        "properties": {
            "order_id": f"o-{i}",
            "amount": 59.9,
            "currency": "EUR",
            "items": [{"sku": "a", "qty": 1}],
        },
    }
    for i in range(500)
]


class PurchasePropertiesSerializer(serializers.Serializer):
    order_id = serializers.CharField(max_length=512)
    amount = serializers.FloatField(min_value=0)
    currency = serializers.RegexField(r"^[A-Z]{3}$")


class EventSerializer(serializers.Serializer):
    event_id = serializers.CharField(max_length=64, required=False)
    event_type = serializers.CharField()
    user_id = serializers.CharField(max_length=128)
    session_id = serializers.CharField(max_length=128, required=False)
    timestamp = serializers.DateTimeField(required=False)
    properties = PurchasePropertiesSerializer()


def drf() -> None:
    serializer = EventSerializer(data=BATCH, many=True)
    assert serializer.is_valid(), serializer.errors


def pydantic() -> None:
    for raw in BATCH:
        event, errors = validate_event(raw)
        assert event is not None, errors


def best_of(fn: object, rounds: int = 15) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - started)
    return statistics.median(times)


if __name__ == "__main__":
    argparse.ArgumentParser(
        prog="benchmarks/validation.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    ).parse_args()
    d, p = best_of(drf), best_of(pydantic)
    print(f"DRF serializers : {d * 1000:7.2f} ms per 500 events ({500 / d:,.0f} events/s)")
    print(f"pydantic models : {p * 1000:7.2f} ms per 500 events ({500 / p:,.0f} events/s)")
    print(f"ratio           : pydantic is {d / p:.1f}x faster")
