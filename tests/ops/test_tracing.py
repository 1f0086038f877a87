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
)
from events.stores import get_event_store
from tests.conftest import Actor, wait_until
from tests.ops.workers import in_process_worker  # also registers the test tasks

_exporter = InMemorySpanExporter()


@pytest.fixture(scope="module")
def spans() -> Iterator[InMemorySpanExporter]:
    assert configure_tracing(service_name="cloudscale-test", instrument_django=True)
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
    set_correlation_id(correlation_id)  # as in an API request; the task has no correlation_id kwarg
    try:
        app.send_task("tests.log_line", kwargs={"message": marker})
    finally:
        set_correlation_id("")
    # The worker sets logging up as it starts: look at the handler it ends up with.
    with in_process_worker(), console_log() as output:
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
