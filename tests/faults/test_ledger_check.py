"""The fault suite's ledger check: which imbalances it reports as the known gap, and which fail."""

from __future__ import annotations

from typing import Any

from tests.faults.harness import hours_shifted_only, ledger_problems


def _row(hour: str, *, accepted: int, stored: int, duplicate: int = 0) -> dict[str, Any]:
    return {
        "hour": hour,
        "received": accepted + duplicate,
        "accepted": accepted,
        "duplicate": duplicate,
        "rejected": 0,
        "rate_limited": 0,
        "stored": stored,
        "dead_lettered": 0,
        "pending": accepted - stored,
    }


def _report(*rows: dict[str, Any]) -> dict[str, Any]:
    totals = _row(
        "totals",
        accepted=sum(row["accepted"] for row in rows),
        stored=sum(row["stored"] for row in rows),
        duplicate=sum(row["duplicate"] for row in rows),
    )
    return {"results": list(rows), "totals": {key: value for key, value in totals.items() if key != "hour"}}


def test_a_batch_accepted_in_one_hour_and_stored_in_the_next_is_the_known_shift() -> None:
    # The shape CI saw: 20 events counted in the earlier hour, their stored copy in the later one.
    report = _report(
        _row("13:00", accepted=1720, stored=1700), _row("14:00", accepted=4480, stored=4500, duplicate=60)
    )

    assert ledger_problems(report) == [f"14:00: pending < 0: {report['results'][1]}"]
    assert hours_shifted_only(report)


def test_a_balanced_ledger_is_not_a_shift() -> None:
    report = _report(_row("13:00", accepted=100, stored=100), _row("14:00", accepted=50, stored=50))

    assert not ledger_problems(report)
    assert not hours_shifted_only(report)


def test_an_hour_below_zero_without_its_offset_is_not_a_shift() -> None:
    # Stored more than accepted in total: an acceptance that was never counted, not a shift.
    report = _report(_row("13:00", accepted=100, stored=100), _row("14:00", accepted=50, stored=70))

    assert not hours_shifted_only(report)


def test_a_shift_beside_another_imbalance_is_not_only_a_shift() -> None:
    report = _report(_row("13:00", accepted=100, stored=80), _row("14:00", accepted=50, stored=70))
    report["results"][0]["received"] += 1  # received no longer equals the four outcomes

    assert not hours_shifted_only(report)
