"""The fault suite's harness: a real API process, a traffic sender that keeps receipts, and the checks.

The sender behaves like a careful client: it sends batches of fresh events, retries a batch with
the *same* event ids after a connection error, a 503 or a 429 (a bounded number of times), and
records for every event how it was answered. An event "got a 202" when a 202 receipt listed it,
as accepted or as a duplicate of an earlier attempt whose answer was lost.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from django.db.models import Count

from cloudscale_project.metrics import PlatformCollector
from events.models import DeadLetter, StoredEvent
from tests.conftest import ROOT, LiveProcess, child_env, wait_until
from tests.events.pipeline_support import platform_counter, redelivered_duplicates
from tests.netutil import free_port

CONNECTION_ERROR = "connection error"
# One line per scenario run; tests/faults/conftest.py puts each test's lines in its report.
SUMMARY: list[str] = []


# --- the API process -------------------------------------------------------------------------------


class ApiServer:
    """gunicorn with the production config on a fixed port, so a restart keeps the clients' URL."""

    def __init__(self, tmp_path: Path, *, port: int | None = None, env: dict[str, str] | None = None) -> None:
        self.tmp_path = tmp_path
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = env or child_env()
        self.live: LiveProcess | None = None
        self.starts = 0

    def start(self, timeout: float = 60) -> None:
        self.starts += 1
        log_path = self.tmp_path / f"api-{self.port}-{self.starts}.log"
        argv = [
            sys.executable, "-m", "gunicorn", "cloudscale_project.wsgi:application",
            "--config", str(ROOT / "deploy" / "gunicorn.conf.py"),
            "--bind", f"127.0.0.1:{self.port}", "--workers", "1",
        ]  # fmt: skip
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                argv, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.live = LiveProcess(process, log_path)
        deadline = time.monotonic() + timeout
        while not self.healthy():
            if process.poll() is not None or time.monotonic() > deadline:
                self.live.stop(signal.SIGKILL)
                raise RuntimeError(f"API did not start:\n{self.live.log()[-3000:]}")
            time.sleep(0.2)

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/healthz", timeout=1) as response:
                return int(response.status) == 200
        except OSError:
            return False

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.live is not None:
            self.live.stop(sig)

    def log(self) -> str:
        return self.live.log() if self.live else ""


def get_json(url: str, *, key: str, timeout: float = 10) -> Any:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


# --- traffic ----------------------------------------------------------------------------------------


def page_view(rng: random.Random) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid4()),
        "event_type": "page_view",
        "user_id": f"u-{rng.randrange(500)}",
        "session_id": f"s-{rng.randrange(2000)}",
        "properties": {"url": f"https://shop.example/p/{rng.randrange(100)}"},
    }


@dataclass
class Receipts:
    """What the clients were told, per event id. Shared by the sender threads (under `lock`)."""

    sent: list[str] = field(default_factory=list)
    acknowledged: set[str] = field(default_factory=set)  # listed in a 202 receipt
    refused: dict[str, str] = field(default_factory=dict)  # never got a 202: the last answer
    answers: Counter[str] = field(default_factory=Counter)  # per request attempt
    unexpected: list[str] = field(default_factory=list)  # any answer docs/api.md does not allow here
    lock: threading.Lock = field(default_factory=threading.Lock)


class TrafficSender(threading.Thread):
    """POSTs batches until stopped (or `max_batches`); retries each batch with the same ids."""

    # A batch is retried for this long at most. It outlasts the API's dedup reservation
    # (events.dedup.RESERVATION_SECONDS, 60 s): a batch whose publish could not be confirmed is
    # refused as "in flight" until the broker's receipt settles it or the reservation expires.
    RETRY_FOR_SECONDS = 100.0
    RETRY_SLEEP_CAP_SECONDS = 2.0  # a client honours Retry-After; the suite caps it to stay quick
    REQUEST_TIMEOUT_SECONDS = 15.0

    def __init__(
        self,
        *,
        url: str,
        key: str,
        receipts: Receipts,
        batch_size: int = 20,
        pause: float = 0.1,
        max_batches: int = 2000,
        seed: int = 0,
    ) -> None:
        super().__init__(daemon=True)
        self.endpoint = f"{url}/api/events/batch"
        self.key = key
        self.receipts = receipts
        self.batch_size = batch_size
        self.pause = pause
        self.max_batches = max_batches
        self.rng = random.Random(seed)
        self.stopping = threading.Event()
        self.batches_acknowledged = 0

    def stop(self) -> None:
        self.stopping.set()

    def run(self) -> None:
        for _ in range(self.max_batches):
            if self.stopping.is_set():
                return
            events = [page_view(self.rng) for _ in range(self.batch_size)]
            with self.receipts.lock:
                self.receipts.sent += [e["event_id"] for e in events]
            self._deliver(events)
            time.sleep(self.pause)

    def _deliver(self, events: list[dict[str, Any]]) -> None:
        ids = [e["event_id"] for e in events]
        body = json.dumps({"events": events}).encode()
        answer = "not sent"
        deadline = time.monotonic() + self.RETRY_FOR_SECONDS
        while time.monotonic() < deadline:
            status, payload, retry_after = self._post(body)
            answer = str(status) if status else CONNECTION_ERROR
            with self.receipts.lock:
                self.receipts.answers[answer] += 1
            if status == 202:
                listed = set(payload["event_ids"]) | {d["event_id"] for d in payload["duplicates"]}
                with self.receipts.lock:
                    if listed != set(ids) or payload["rejected"]:
                        self.receipts.unexpected.append(f"202 receipt does not list the batch: {payload}")
                    self.receipts.acknowledged |= listed & set(ids)
                    for event_id in set(ids) - listed:
                        self.receipts.refused[event_id] = "missing from its 202 receipt"
                self.batches_acknowledged += 1
                return
            if status not in {None, 429, 503}:
                with self.receipts.lock:
                    self.receipts.unexpected.append(f"HTTP {status}: {payload}")
                break
            time.sleep(min(retry_after or 0.2, self.RETRY_SLEEP_CAP_SECONDS))
        with self.receipts.lock:
            for event_id in ids:
                self.receipts.refused[event_id] = answer

    def _post(self, body: bytes) -> tuple[int | None, Any, float | None]:
        """(status, JSON body, Retry-After); status None = a connection error the client saw."""
        request = urllib.request.Request(
            self.endpoint,
            data=body,
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {self.key}"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.REQUEST_TIMEOUT_SECONDS) as response:
                return int(response.status), json.loads(response.read()), None
        except urllib.error.HTTPError as exc:
            retry_after = exc.headers.get("Retry-After")
            try:
                payload = json.loads(exc.read())
            except (ValueError, OSError):
                payload = None
            return int(exc.code), payload, float(retry_after) if retry_after else None
        except (OSError, ValueError):  # refused, reset, timed out, closed mid-response
            return None, None, None


class Traffic:
    """A few sender threads sharing one set of receipts."""

    def __init__(self, *, url: str, key: str, senders: int = 1, **options: Any) -> None:
        self.receipts = Receipts()
        self.senders = [
            TrafficSender(url=url, key=key, receipts=self.receipts, seed=i, **options) for i in range(senders)
        ]

    def __enter__(self) -> Traffic:
        for sender in self.senders:
            sender.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        for sender in self.senders:
            sender.stop()
        for sender in self.senders:
            # A sender may be inside a batch's retries: bounded by RETRY_FOR_SECONDS + one request.
            sender.join(timeout=TrafficSender.RETRY_FOR_SECONDS + 30)
        assert not any(s.is_alive() for s in self.senders), "a traffic sender did not stop"

    def acknowledged_batches(self) -> int:
        return sum(s.batches_acknowledged for s in self.senders)

    def wait_for_batches(self, n: int, timeout: float = 60) -> None:
        start = self.acknowledged_batches()
        wait_until(
            lambda: self.acknowledged_batches() >= start + n, timeout=timeout, message=f"{n} more batches"
        )


def wait_or_explain(
    predicate: Any,
    *,
    message: str,
    timeout: float,
    traffic: Traffic,
    processes: dict[str, LiveProcess | None],
) -> None:
    """`wait_until`, whose failure says what each process was doing: whether it is alive and the
    end of its log, and what the clients were answered. A rare stall (seen once in CI, not
    reproduced in five runs) must leave enough behind to be explained."""
    try:
        wait_until(predicate, timeout=timeout, message=message)
    except AssertionError as exc:
        parts = [str(exc), f"answers so far: {dict(sorted(traffic.receipts.answers.items()))}"]
        for name, live in processes.items():
            if live is None:
                parts.append(f"--- {name}: not started")
                continue
            state = "alive" if live.process.poll() is None else f"exited {live.process.returncode}"
            tail = "\n".join(live.log().splitlines()[-40:])
            parts.append(f"--- {name} ({state}), the end of its log:\n{tail}")
        raise AssertionError("\n".join(parts)) from None


# --- checks ---------------------------------------------------------------------------------------


def platform_total(name: str, **labels: str) -> float:
    """A platform-wide counter summed over the samples that carry `labels` (any other labels)."""
    return sum(
        float(sample.value)
        for family in PlatformCollector().collect()
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


def stored_ids(tenant: str) -> set[str]:
    return set(StoredEvent.objects.filter(tenant=tenant).values_list("event_id", flat=True))


def ledger(url: str, key: str) -> dict[str, Any]:
    payload: dict[str, Any] = get_json(f"{url}/api/ledger", key=key)
    return payload


def ledger_problems(report: dict[str, Any]) -> list[str]:
    """Each hour and the totals must balance: received = the four API outcomes; pending = the rest."""
    problems = []
    for row in [*report["results"], {"hour": "totals", **report["totals"]}]:
        outcomes = row["accepted"] + row["duplicate"] + row["rejected"] + row["rate_limited"]
        if row["received"] != outcomes:
            problems.append(f"{row['hour']}: received {row['received']} != outcomes {outcomes}")
        if row["pending"] != row["accepted"] - row["stored"] - row["dead_lettered"]:
            problems.append(f"{row['hour']}: pending does not balance: {row}")
        if row["pending"] < 0:
            problems.append(f"{row['hour']}: pending < 0: {row}")
    return problems


def hours_shifted_only(report: dict[str, Any]) -> bool:
    """True when the ledger's only fault is events counted as accepted in one hour and stored in
    another: the totals balance with nothing pending, every hour's own sums hold, and the hours
    whose pending is below 0 are exactly offset by hours still showing pending ones."""
    totals = report["totals"]
    rows = report["results"]
    negative = [row for row in rows if row["pending"] < 0]
    return (
        bool(negative)
        and totals["pending"] == 0
        and sum(row["pending"] for row in rows) == 0
        and ledger_problems(report) == [f"{row['hour']}: pending < 0: {row}" for row in negative]
    )


@dataclass
class FaultReport:
    scenario: str
    sent: int
    acknowledged: int
    refused: int
    stored: int
    stored_without_202: int
    duplicate_rows: int
    lost: int
    redelivered_duplicates: float
    retried: float
    answers: dict[str, int]
    ledger_totals: dict[str, int]
    seconds: float

    def line(self) -> str:
        return (
            f"[faults] {self.scenario}: sent={self.sent} 202={self.acknowledged} refused={self.refused} "
            f"stored={self.stored} (without a 202: {self.stored_without_202}) "
            f"duplicates={self.duplicate_rows} lost={self.lost} "
            f"worker-duplicates={self.redelivered_duplicates:.0f} retried={self.retried:.0f} "
            f"answers={dict(sorted(self.answers.items()))} ledger={self.ledger_totals} "
            f"in {self.seconds:.0f}s"
        )


def settle_and_check(
    *,
    scenario: str,
    traffic: Traffic,
    tenant: str,
    api_url: str,
    key: str,
    started: float,
    expected_dead_letters: int = 0,
    known_ledger_undercount: bool = False,
    settle_timeout: float = 90,
) -> FaultReport:
    """After the traffic stopped: wait until every acknowledged event is stored and the ledger has
    nothing pending (bounded), then assert exactly-once storage and a balanced ledger."""
    receipts = traffic.receipts
    sent = set(receipts.sent)

    deadline = time.monotonic() + settle_timeout
    while time.monotonic() < deadline and not receipts.acknowledged <= stored_ids(tenant):
        time.sleep(0.5)
    while time.monotonic() < deadline:
        report = ledger(api_url, key)
        if report["totals"]["pending"] == 0:
            break
        time.sleep(0.5)
    report = ledger(api_url, key)

    stored = stored_ids(tenant)
    duplicate_rows = (
        StoredEvent.objects.filter(tenant=tenant)
        .values("event_id")
        .annotate(n=Count("id"))
        .filter(n__gt=1)
        .count()
    )
    lost = receipts.acknowledged - stored
    result = FaultReport(
        scenario=scenario,
        sent=len(sent),
        acknowledged=len(receipts.acknowledged),
        refused=len(receipts.refused),
        stored=len(stored & sent),
        stored_without_202=len((stored & sent) - receipts.acknowledged),
        duplicate_rows=duplicate_rows,
        lost=len(lost),
        redelivered_duplicates=redelivered_duplicates(),
        retried=platform_counter(
            "cloudscale_events_processed_total", event_type="page_view", outcome="retried"
        ),
        answers=dict(receipts.answers),
        ledger_totals=report["totals"],
        seconds=time.monotonic() - started,
    )
    print(result.line())
    SUMMARY.append(result.line())
    write_report(result)

    assert len(sent) == len(receipts.sent), "event ids are unique"
    assert not receipts.unexpected, f"answers docs/api.md does not allow: {receipts.unexpected[:5]}"
    assert receipts.acknowledged | set(receipts.refused) == sent, "every event was answered"
    assert not receipts.acknowledged & set(receipts.refused), "no event is both acknowledged and refused"
    assert result.acknowledged > 0, "traffic got through before and after the fault"
    assert not lost, f"{len(lost)} acknowledged event(s) were never stored, e.g. {sorted(lost)[:3]}"
    assert stored <= sent, "nothing but the sent events is stored for the tenant"
    assert duplicate_rows == 0
    letters = list(DeadLetter.objects.values_list("reason", "kind", "tenant", "error"))
    assert len(letters) == expected_dead_letters, f"unexpected dead letters: {letters[:5]}"
    if (
        known_ledger_undercount
        and report["totals"]["pending"] < 0
        and report["totals"]["stored"] == len(stored)
    ):
        # Nothing was lost or stored twice (asserted above), but an acceptance was never counted:
        # what is left of docs/decisions.md, "The ledger under broker kills: publish receipts".
        pytest.xfail(f"known ledger gap under broker kills: {report['totals']}")
    if known_ledger_undercount and hours_shifted_only(report):
        # The totals balance and nothing is pending, but a batch counted as accepted in one hour was
        # stored under a copy received in another: the per-hour half of the same open gap.
        pytest.xfail(f"known ledger gap under broker kills, across an hour: {report['results']}")
    assert not ledger_problems(report), ledger_problems(report)
    assert report["totals"]["pending"] == 0, f"ledger still pending: {report['totals']}"
    assert report["totals"]["stored"] == len(stored)
    # Everything the API accepted is stored; a refused request's events are counted as rejected.
    assert report["totals"]["accepted"] == len(stored)
    return result


def write_report(result: FaultReport) -> None:
    """Also keep the counts as a CI artifact (test-artifacts/ is gitignored)."""
    folder = ROOT / "test-artifacts"
    folder.mkdir(exist_ok=True)
    line = json.dumps({"at": datetime.now(UTC).isoformat(), **result.__dict__}, default=str)
    with (folder / "faults.jsonl").open("a") as out:
        out.write(line + os.linesep)
