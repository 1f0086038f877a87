"""One trace from the API request through the broker to the worker task and the store write."""

from __future__ import annotations

import io
import json
import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import connection
from django.test import Client, override_settings
from opentelemetry import trace
from opentelemetry.instrumentation.django import DjangoInstrumentor
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from pythonjsonlogger.json import JsonFormatter

from cloudscale_project.celery import app
from cloudscale_project.correlation import set_correlation_id
from cloudscale_project.observability import (
    ATTR_CORRELATION_ID,
    ATTR_TENANT,
    _build_provider,
    configure_tracing,
    tracer,
)
from events.stores import get_event_store
from tests.conftest import Actor, wait_until
from tests.cosmos_fixtures import CosmosServer
from tests.events.test_store_contract import NOV, OCT, make_event
from tests.ops.workers import in_process_worker  # also registers the test tasks

_exporter = InMemorySpanExporter()


@pytest.fixture(scope="module")
def spans() -> Iterator[InMemorySpanExporter]:
    # No exporter is configured here: the test's in-memory one is added below, so ask to record.
    assert configure_tracing(service_name="cloudscale-test", instrument_django=True, record=True)
    provider = trace.get_tracer_provider()
    if not getattr(provider, "_cloudscale_test_exporter", False):
        provider.add_span_processor(SimpleSpanProcessor(_exporter))  # type: ignore[attr-defined]
        provider._cloudscale_test_exporter = True  # type: ignore[attr-defined]
    yield _exporter
    DjangoInstrumentor().uninstrument()  # other test modules see the settings they expect


@pytest.fixture(autouse=True)
def _fresh_spans(spans: InMemorySpanExporter) -> None:
    spans.clear()


def _one(spans: list[ReadableSpan], kind: SpanKind, prefix: str) -> ReadableSpan:
    found = [s for s in spans if s.kind == kind and s.name.startswith(prefix)]
    assert len(found) == 1, [(s.name, s.kind) for s in spans]
    return found[0]


@pytest.mark.e2e
def test_it_traces_a_post_through_the_worker_to_the_store(
    transactional_db: None, spans: InMemorySpanExporter, acme: Actor
) -> None:
    correlation_id = str(uuid.uuid4())
    event = {"event_type": "page_view", "user_id": "u-7", "properties": {"url": "https://shop.example/"}}
    response = Client().post(
        "/api/events", data=json.dumps(event), content_type="application/json",
        HTTP_X_CORRELATION_ID=correlation_id, **acme.headers,
    )  # fmt: skip
    assert response.status_code == 202, response.content
    event_id = response.json()["event_id"]

    with in_process_worker():
        wait_until(
            lambda: any(s.kind == SpanKind.CONSUMER for s in spans.get_finished_spans()),
            timeout=20,
            message="the worker's task span",
        )
    assert get_event_store().get(tenant="acme", event_id=event_id) is not None

    finished = list(spans.get_finished_spans())
    request = _one(finished, SpanKind.SERVER, "POST")
    publish = _one(finished, SpanKind.PRODUCER, "publish events.process_batch")
    process = _one(finished, SpanKind.CONSUMER, "process events.process_batch")
    store = _one(finished, SpanKind.INTERNAL, "event_store.write")
    assert {s.context.trace_id for s in (request, publish, process, store)} == {request.context.trace_id}
    assert publish.parent is not None and publish.parent.span_id == request.context.span_id
    assert process.parent is not None and process.parent.span_id == publish.context.span_id
    assert store.parent is not None and store.parent.span_id == process.context.span_id
    for span in (request, publish, process, store):
        assert span.attributes is not None and span.attributes[ATTR_CORRELATION_ID] == correlation_id
    assert request.attributes is not None and request.attributes[ATTR_TENANT] == "acme"
    assert process.attributes is not None and process.attributes[ATTR_TENANT] == "acme"


@contextmanager
def console_log() -> Iterator[io.StringIO]:
    """What the configured JSON console handler (settings.LOGGING) writes, while inside."""
    (console,) = [
        h
        for h in logging.getLogger().handlers
        if isinstance(h, logging.StreamHandler) and isinstance(h.formatter, JsonFormatter)
    ]
    buffer = io.StringIO()
    previous = console.setStream(buffer)
    try:
        yield buffer
    finally:
        console.setStream(previous)


@pytest.mark.e2e
def test_it_carries_the_correlation_id_in_the_headers_to_the_workers_logs(
    transactional_db: None, spans: InMemorySpanExporter
) -> None:
    correlation_id, marker = str(uuid.uuid4()), f"hello {uuid.uuid4()}"
    # The worker sets logging up as it starts: look at the handler it ends up with, and send the
    # task only then (sent before, it could be run and logged before the stream was swapped).
    with in_process_worker(), console_log() as output:
        set_correlation_id(correlation_id)  # as in an API request; the task has no correlation_id kwarg
        try:
            app.send_task("tests.log_line", kwargs={"message": marker})
        finally:
            set_correlation_id("")
        wait_until(lambda: any(s.kind == SpanKind.CONSUMER for s in spans.get_finished_spans()), timeout=20)
    process = _one(list(spans.get_finished_spans()), SpanKind.CONSUMER, "process tests.log_line")
    assert process.attributes is not None and process.attributes[ATTR_CORRELATION_ID] == correlation_id
    records = [json.loads(line) for line in output.getvalue().splitlines() if marker in line]
    (line,) = [r for r in records if r["logger"] == "tests.ops.workers"]
    assert (line["correlation_id"], line["tenant"], line["event_type"]) == (
        correlation_id,
        "acme",
        "page_view",
    )


def test_it_leaves_probes_and_scrapes_untraced(db: None, spans: InMemorySpanExporter) -> None:
    client = Client()
    assert client.get("/healthz").status_code == 200
    assert client.get("/metrics").status_code == 200
    assert spans.get_finished_spans() == ()


def test_it_exports_nowhere_without_an_exporter_setting() -> None:
    provider = _build_provider("cloudscale-test")
    assert provider._active_span_processor._span_processors == ()
    assert provider.resource.attributes["service.name"] == "cloudscale-test"


_PROBE = """
import django, sys
django.setup()
from opentelemetry import trace
from opentelemetry.instrumentation.redis import RedisInstrumentor
from cloudscale_project.observability import configure_tracing, start_span
on = configure_tracing(service_name="probe", instrument_django=True)
with trace.get_tracer("probe").start_as_current_span("work") as span:
    recording = span.is_recording()
with start_span("event_store.write_many") as ours:  # our own spans follow the same rule
    ours_recording = ours.is_recording() and trace.get_current_span() is ours
print(on, recording, RedisInstrumentor().is_instrumented_by_opentelemetry, ours_recording)
"""


@pytest.mark.parametrize(
    ("extra_env", "expected"),
    [
        ({}, "False False False False"),  # nowhere to export: no provider, no instrumentation, no spans
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"}, "True True True True"),
    ],
)
def test_spans_are_made_only_when_they_have_somewhere_to_go(extra_env: dict[str, str], expected: str) -> None:
    import os

    from tests.conftest import run_python

    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "APPLICATIONINSIGHTS"))}
    env |= {"DJANGO_SETTINGS_MODULE": "cloudscale_project.settings", **extra_env}
    done = run_python(_PROBE, env=env)

    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == expected


@override_settings(OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:4318")
def test_it_exports_by_otlp_when_an_endpoint_is_set() -> None:
    (processor,) = _build_provider("cloudscale-test")._active_span_processor._span_processors
    assert type(processor._batch_processor._exporter).__name__ == "OTLPSpanExporter"


@override_settings(
    APPLICATIONINSIGHTS_CONNECTION_STRING="InstrumentationKey=00000000-0000-0000-0000-000000000000"
)
def test_it_exports_to_azure_monitor_when_a_connection_string_is_set() -> None:
    try:
        import azure.monitor.opentelemetry.exporter  # noqa: F401
    except ImportError:
        with pytest.raises(ImproperlyConfigured, match=r"pip install 'cloudscale\[azure-monitor\]'"):
            _build_provider("cloudscale-test")
        return
    (processor,) = _build_provider("cloudscale-test")._active_span_processor._span_processors
    assert type(processor._batch_processor._exporter).__name__ == "AzureMonitorTraceExporter"


@pytest.mark.e2e
def test_one_trace_reaches_redis_and_the_database_from_the_api_and_the_worker(
    transactional_db: None, spans: InMemorySpanExporter, acme: Actor
) -> None:
    event = {"event_type": "page_view", "user_id": "u-8", "properties": {"url": "https://shop.example/"}}
    response = Client().post(
        "/api/events", data=json.dumps(event), content_type="application/json", **acme.headers
    )
    assert response.status_code == 202, response.content
    with in_process_worker():
        wait_until(
            lambda: any(s.kind == SpanKind.CONSUMER for s in spans.get_finished_spans()),
            timeout=20,
            message="the worker's task span",
        )
    finished = list(spans.get_finished_spans())
    request = _one(finished, SpanKind.SERVER, "POST")
    process = _one(finished, SpanKind.CONSUMER, "process events.process_batch")
    store = _one(finished, SpanKind.INTERNAL, "event_store.write")
    in_trace = [s for s in finished if s.context.trace_id == request.context.trace_id]
    by_id = {s.context.span_id: s for s in in_trace}

    def under(span: ReadableSpan, ancestor: ReadableSpan) -> bool:
        parent = span.parent
        while parent is not None:
            if parent.span_id == ancestor.context.span_id:
                return True
            parent = by_id[parent.span_id].parent if parent.span_id in by_id else None
        return False

    clients = [s for s in in_trace if s.kind == SpanKind.CLIENT]
    systems = {(s.attributes or {}).get("db.system") for s in clients}
    database = "postgresql" if connection.vendor == "postgresql" else "sqlite"
    assert {"redis", database} <= systems, sorted(str(s) for s in systems)
    # The API's own calls (key lookup in the database; dedup and ledger in Redis) ...
    api_calls = {(s.attributes or {}).get("db.system") for s in clients if under(s, request)}
    assert {"redis", database} <= api_calls
    # ... and the worker's insert into the event store, under the store span of the same trace.
    inserts = [s for s in clients if under(s, store) and (s.attributes or {}).get("db.operation") == "INSERT"]
    assert inserts and all(under(s, process) for s in inserts)
    # Every span of the request is in this one trace: nothing of it started a trace of its own.
    assert len({s.context.trace_id for s in finished if under(s, request) or s is request}) == 1


def test_client_calls_outside_a_trace_make_no_trace_of_their_own(
    db: None, spans: InMemorySpanExporter
) -> None:
    from cloudscale_project.state import state_redis

    state_redis().ping()
    assert [s.name for s in spans.get_finished_spans()] == []


def test_cosmos_sdk_calls_are_spans_of_the_callers_trace(
    spans: InMemorySpanExporter, cosmos_server: CosmosServer
) -> None:
    store = cosmos_server.store()  # creates the test's container: spans of their own
    spans.clear()
    with tracer().start_as_current_span("process events.process_batch", kind=SpanKind.CONSUMER) as parent:
        store.write_many([make_event(tenant="acme", timestamp=OCT, received_at=NOV)])
    finished = list(spans.get_finished_spans())
    trace_id = parent.get_span_context().trace_id
    sdk = [
        s for s in finished if s.instrumentation_scope and s.instrumentation_scope.name.startswith("azure")
    ]
    assert sdk, [(s.name, s.instrumentation_scope) for s in finished]
    assert {s.context.trace_id for s in sdk} == {trace_id}, "the pool's threads carry the caller's context"
    assert any("create_item" in s.name for s in sdk), sorted({s.name for s in sdk})


def test_a_webhook_post_is_a_client_span_and_carries_the_trace_to_the_receiver(
    spans: InMemorySpanExporter,
) -> None:
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from carts.webhooks import webhook_post

    received: list[str] = []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(self.headers.get("traceparent", ""))
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with tracer().start_as_current_span("process scoring.fire_cart_abandonments") as parent:
            result = webhook_post(
                url=f"http://127.0.0.1:{server.server_port}/hook", secret="s", body=b"{}",
                delivery_id="cart-1", event="cart.abandoned",
            )  # fmt: skip
    finally:
        server.shutdown()
    assert result.ok and result.status == 204
    post = _one(list(spans.get_finished_spans()), SpanKind.CLIENT, "webhook POST")
    assert post.parent is not None and post.parent.span_id == parent.get_span_context().span_id
    assert post.attributes is not None and post.attributes["http.response.status_code"] == 204
    (traceparent,) = received
    assert traceparent.split("-")[1] == f"{post.context.trace_id:032x}"
