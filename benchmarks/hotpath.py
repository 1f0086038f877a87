"""CPU per event of the hot path's stages, in one process: a steadier gauge of a code lever than the
whole platform (`benchmarks/ab.py`), whose runs vary by 10-20 % on a shared machine.

Each stage handles the same 500-event batches (the bench's traffic, one address per session) many
times; the figure is the median of the rounds' process CPU time per event, in microseconds. The
worker stages take them in messages of `--message-size` events: 500 as the batched bench, 3-4 as
single events arrive after the API's group commit, where each message's own cost shows. Stages:
  api        request body (orjson) → validation → enrichment → the message's encoding (no I/O)
  decode     the worker's decoding of a message's events (no I/O)
  store      OrmEventStore.write_many on SQLite (a fresh database under a temporary folder)
  scoring    scores_apply on SQLite
  carts      cart_events_record on SQLite
  fraud      fraud_alerts_raise: the rule windows on an embedded Redis of the run's own
  pipeline   the whole task body (batch_process_message): every step above, the ledger, metrics

Then the task body once more, with each part of it timed as the worker runs it (rows `body.*`):
decode, each pipeline step (by app: fraud from sending the script to writing the alerts, scoring,
carts), the store, the metrics and what is left (`other`: outcome lists, logging, spans). The
`body.gc` row is the cyclic garbage collector's own time, read with `gc.callbacks`; it happens
inside the other rows and is counted there too. While a stage is timed, what the process made in
advance (the stage's batches, Django's start-up) is frozen out of the collector's sight, as a
worker holds only the message it runs.

With `--a-tree`/`--b-tree` it alternates two checkouts (e.g. a `git worktree` of the commit before
a lever and this one), `--rounds` times each, and prints the medians side by side with B/A.

Examples:
  .venv/bin/python benchmarks/hotpath.py
  git worktree add /tmp/before HEAD~1
  .venv/bin/python benchmarks/hotpath.py --a-tree /tmp/before --b-tree . --rounds 5
  .venv/bin/python benchmarks/hotpath.py --message-size 4     # the worker's cost for single events
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, cast

if __package__:  # imported as benchmarks.hotpath (the tests)
    from benchmarks import sidebyside
else:  # a script, here or in a child on another tree: the module beside this file
    import sidebyside  # type: ignore[no-redef]

BATCH = 500  # events per measured unit: the bench's batches
STAGES = ("api", "decode", "store", "scoring", "carts", "fraud", "pipeline")
# The task body's parts (`_body_sections`), printed under `pipeline`.
BODY_SECTIONS = ("decode", "fraud", "scoring", "store", "carts", "metrics", "other", "gc")


@contextmanager
def _heap_as_a_workers() -> Iterator[None]:
    """Out of the collector's sight while a stage is timed: what this process holds beyond what a
    worker would (every batch of the stage, made in advance). Unfrozen, the collector walked them
    at each full collection: 22 µs an event of `body.gc` in messages of 500 events, where a
    worker's pool process spends 4-5 µs (docs/benchmarks.md, "Levers, twenty-first round")."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _per_event_us(run: Callable[[], object], *, rounds: int) -> float:
    """Median CPU microseconds per event of `run` (BATCH events), after one warm-up round."""
    run()
    samples = []
    with _heap_as_a_workers():
        for _ in range(rounds):
            started = time.process_time()
            run()
            samples.append((time.process_time() - started) * 1e6 / BATCH)
    return round(statistics.median(samples), 2)


def _in_messages(step: Callable[[list[Any]], object], size: int) -> Callable[[list[Any]], None]:
    """`step` called once per message of `size` events: the per-message share of a stage shows."""

    def run(events: list[Any]) -> None:
        for start in range(0, len(events), size):
            step(events[start : start + size])

    return run


def measure(rounds: int, message_size: int = BATCH) -> dict[str, float]:
    """Every stage's figure, measured in this process (Django set up on a fresh SQLite database)."""
    with sidebyside.fresh_stack():
        return _measure_stages(rounds, message_size)


def _measure_stages(rounds: int, message_size: int) -> dict[str, float]:
    import orjson

    from benchmarks.loadgen import TrafficGenerator
    from carts.services import cart_events_record
    from cloudscale_project.serialization import orjson_dumps
    from cloudscale_project.timeutil import isoformat_z, utcnow
    from events.enrichment import enrich_event
    from events.pipeline import batch_process_message, decode_batch
    from events.schemas import validate_event
    from events.stores.base import Event
    from events.stores.orm import OrmEventStore
    from fraud.services import fraud_alerts_raise
    from scoring.services import scores_apply
    from tenants.services import tenant_create

    planned = TrafficGenerator(seed=11).take(BATCH)
    sent_at = isoformat_z(utcnow())
    body = orjson.dumps({"events": [{**p.event, "sent_at": sent_at} for p in planned]})
    enriched: list[dict[str, Any]] = []

    def api() -> None:
        enriched.clear()
        received_at = utcnow()
        for raw, sent in zip(orjson.loads(body)["events"], planned, strict=True):
            valid, errors = validate_event(raw)
            assert valid is not None, errors
            enriched.append(
                enrich_event(
                    valid,
                    tenant="hotpath",
                    received_at=received_at,
                    ip=sent.client_ip,  # one address per session, as the bench's batched run
                    user_agent="hotpath",
                    correlation_id="c-hotpath",
                )
            )
        orjson_dumps([[], {"tenant": "hotpath", "events": enriched, "correlation_id": "c"}, {}])

    figures = {"api": _per_event_us(api, rounds=rounds)}
    message_events = orjson.loads(orjson_dumps(enriched))
    made = iter(range(1, 1 << 30))

    def fresh() -> list[dict[str, Any]]:
        """The batch with new ids and times no stage of this process has seen (no cache helps)."""
        return [
            {
                **event,
                "event_id": str(uuid.uuid4()),
                "timestamp": f"{event['timestamp'][:20]}{next(made) % 10**6:06d}Z",
            }
            for event in message_events
        ]

    batches = [fresh() for _ in range(rounds + 1)]
    figures["decode"] = _per_event_us(
        lambda: decode_batch(tenant="hotpath", events=batches.pop()), rounds=rounds
    )

    def decoded() -> list[Event]:
        return decode_batch(tenant="hotpath", events=fresh()).events

    store = OrmEventStore()
    write = _in_messages(store.write_many, message_size)
    stored = [decoded() for _ in range(rounds + 1)]
    figures["store"] = _per_event_us(lambda: write(stored.pop()), rounds=rounds)
    score = _in_messages(lambda events: scores_apply(tenant="hotpath", events=events), message_size)
    batches = [fresh() for _ in range(rounds + 1)]
    figures["scoring"] = _per_event_us(lambda: score(batches.pop()), rounds=rounds)
    record = _in_messages(lambda events: cart_events_record(tenant="hotpath", events=events), message_size)
    batches = [fresh() for _ in range(rounds + 1)]
    figures["carts"] = _per_event_us(lambda: record(batches.pop()), rounds=rounds)
    tenant_create(slug="hotpath", name="Hotpath")
    alert = _in_messages(lambda events: fraud_alerts_raise(tenant="hotpath", events=events), message_size)
    stored = [decoded() for _ in range(rounds + 1)]
    figures["fraud"] = _per_event_us(lambda: alert(cast(list[Any], stored.pop())), rounds=rounds)
    process = _in_messages(
        lambda events: batch_process_message(
            args=(), kwargs={"tenant": "hotpath", "events": events, "correlation_id": "c"}, attempt=1
        ),
        message_size,
    )
    batches = [fresh() for _ in range(rounds + 1)]
    figures["pipeline"] = _per_event_us(lambda: process(batches.pop()), rounds=rounds)
    figures.update(_body_sections([fresh() for _ in range(rounds + 1)], message_size))
    return figures


class _Clock:
    """Process CPU per named part of the task body, and the garbage collector's own."""

    def __init__(self) -> None:
        self.spent: dict[str, float] = dict.fromkeys(BODY_SECTIONS, 0.0)
        self._gc_started = 0.0
        self._inner = 0.0  # time of timed parts inside the one running now (scoring inside the store)

    def timed(self, name: str, call: Callable[..., Any]) -> Callable[..., Any]:
        """`call`, with its own time (less that of timed parts it runs) added to `name`."""

        def run(*args: Any, **kwargs: Any) -> Any:
            started = time.process_time()
            enclosing, self._inner = self._inner, 0.0
            try:
                return call(*args, **kwargs)
            finally:
                elapsed = time.process_time() - started
                self.spent[name] = self.spent.get(name, 0.0) + elapsed - self._inner
                self._inner = enclosing + elapsed

        return run

    def on_gc(self, phase: str, _info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_started = time.process_time()
        else:
            self.spent["gc"] += time.process_time() - self._gc_started


class _TimedBegun:
    """A begun step (fraud: `begin`, then `finish` after the store) with both halves timed."""

    def __init__(self, step: Any, clock: _Clock, name: str) -> None:
        self._step, self._clock, self._name = step, clock, name

    def begin(self, **kwargs: Any) -> _TimedPending:
        pending = self._clock.timed(self._name, self._step.begin)(**kwargs)
        return _TimedPending(pending, self._clock, self._name)


class _TimedStored:
    """A step the store may run inside its transaction (scoring): called or `apply_stored`, timed."""

    def __init__(self, step: Any, clock: _Clock, name: str) -> None:
        self._call = clock.timed(name, step)
        self.apply_stored = clock.timed(name, step.apply_stored)

    def __call__(self, **kwargs: Any) -> Any:
        return self._call(**kwargs)


class _TimedPending:
    """The begun step's second half, timed under the same name."""

    def __init__(self, pending: Any, clock: _Clock, name: str) -> None:
        self._pending, self._clock, self._name = pending, clock, name

    def finish(self) -> Any:
        return self._clock.timed(self._name, self._pending.finish)()

    def abandon(self) -> Any:
        return self._pending.abandon()


def _timed_step(step: Any, clock: _Clock, name: str) -> Any:
    if hasattr(step, "begin"):
        return _TimedBegun(step, clock, name)
    if hasattr(step, "apply_stored"):
        return _TimedStored(step, clock, name)
    return clock.timed(name, step)


def _step_name(step: Any) -> str:
    """A pipeline step by its app (fraud, scoring, carts)."""
    return str(getattr(step, "__module__", type(step).__module__)).split(".")[0]


def _body_sections(batches: list[list[dict[str, Any]]], message_size: int) -> dict[str, float]:
    """µs per event of each part of the task body, over `batches` (each cut into messages)."""
    import events.pipeline as pipeline_module
    from events.pipeline import Pipeline, batch_process_message, default_pipeline

    clock = _Clock()
    default = default_pipeline()
    store = default.store
    store.write_many = clock.timed("store", store.write_many)  # type: ignore[method-assign]
    # The wrappers call the steps as the pipeline would; they are not BatchSteps by type.
    before: tuple[Any, ...] = tuple(
        _timed_step(step, clock, _step_name(step)) for step in default.before_store
    )
    after: tuple[Any, ...] = tuple(clock.timed(_step_name(step), step) for step in default.after_store)
    timed_pipeline = Pipeline(store=store, before_store=before, after_store=after)
    patched = {
        "decode_batch": clock.timed("decode", pipeline_module.decode_batch),
        "platform_incr_many": clock.timed("metrics", pipeline_module.platform_incr_many),
    }
    originals = {name: getattr(pipeline_module, name) for name in patched}

    def process(events: list[Any]) -> None:
        batch_process_message(
            args=(),
            kwargs={"tenant": "hotpath", "events": events, "correlation_id": "c"},
            attempt=1,
            pipeline=timed_pipeline,
        )

    run = _in_messages(process, message_size)
    for name, replacement in patched.items():
        setattr(pipeline_module, name, replacement)
    try:
        run(batches.pop())  # warm-up, not counted
        clock.spent = dict.fromkeys(BODY_SECTIONS, 0.0)
        with _heap_as_a_workers():
            gc.callbacks.append(clock.on_gc)
            try:
                started = time.process_time()
                events = 0
                while batches:
                    batch = batches.pop()
                    run(batch)
                    events += len(batch)
                total = time.process_time() - started
            finally:
                gc.callbacks.remove(clock.on_gc)
    finally:
        for name, original in originals.items():
            setattr(pipeline_module, name, original)
        del store.write_many  # the store (shared in this process) is itself again
    named = sum(spent for name, spent in clock.spent.items() if name not in {"other", "gc"})
    clock.spent["other"] = max(total - named, 0.0)
    return {f"body.{name}": round(spent * 1e6 / events, 2) for name, spent in clock.spent.items()}


def run_tree(tree: str, rounds: int, message_size: int = BATCH) -> dict[str, float]:
    """One measurement in a child process running `tree`'s code on a database of its own."""
    arguments = ["--batches", str(rounds), "--message-size", str(message_size)]
    reply = sidebyside.measure_in_tree(
        __file__, tree, arguments, env={"CLOUDSCALE_EMBEDDED_REDIS_FSYNC": "everysec"}
    )
    if reply["message_size"] != message_size:
        raise SystemExit(f"hotpath run in {tree} measured messages of {reply['message_size']} events")
    figures: dict[str, float] = reply["figures"]
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sidebyside.add_tree_arguments(parser, rounds=5)
    parser.add_argument("--batches", type=int, default=15, help="batches per stage and run (default: 15)")
    parser.add_argument(
        "--message-size",
        type=int,
        default=BATCH,
        help=f"events per message the worker stages get (default: {BATCH}, the bench's batch; "
        "3-4 is what single events group-commit to)",
    )
    args = parser.parse_args(argv)
    if args.measure:
        figures = measure(args.batches, args.message_size)
        print(json.dumps({"message_size": args.message_size, "figures": figures}))
        return 0
    trees = sidebyside.trees_of(args)
    results = sidebyside.alternate(
        trees,
        rounds=args.rounds,
        measure=lambda tree: run_tree(tree, args.batches, args.message_size),
        tag="hotpath",
    )
    sidebyside.print_medians(
        trees,
        results,
        (*STAGES, *(f"body.{name}" for name in BODY_SECTIONS)),
        caption=f"worker stages in messages of {args.message_size} events; figures per event",
        heading="µs CPU per event",
        width=18,
        digits=1,
    )
    print("(body.*: the task body's parts as the worker runs it; body.gc is inside the other rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
