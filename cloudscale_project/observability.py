"""OpenTelemetry tracing: one trace from the API request through the broker to the worker and the store.

- `configure_tracing()` installs the tracer provider once per process: wsgi.py calls it for the
  API (with the Django instrumentation), the Celery worker through `worker_init`/`worker_process_init`
  (see `install_celery_hooks`). Exporters: OTLP/HTTP when OTEL_EXPORTER_OTLP_ENDPOINT is set, Azure
  Monitor when APPLICATIONINSIGHTS_CONNECTION_STRING is set; with neither, tracing stays off (no
  provider, no instrumentation: spans that go nowhere only cost CPU). OTEL_SDK_DISABLED=true turns
  it off in any case.
- Publish and consume spans come from Celery signals (below), not opentelemetry-instrumentation-celery:
  its publish hook starts and activates a span it never ends when the task is published by name
  (`send_task`) from a process where that task is not registered, which is exactly how the API
  publishes `events.process_batch`. The W3C trace context and the correlation id travel in the
  message headers; the worker restores both, so log lines and spans of a batch carry the request's ids.
- `start_span()` is for our own work (the store write).
- Store and broker clients (`instrument_clients`): Redis commands (opentelemetry-instrumentation-redis),
  SQL on PostgreSQL/SQLite (Django's own `execute_wrapper`, one CLIENT span per statement), the
  Cosmos DB and Service Bus SDKs (azure-core's OpenTelemetry plugin), outgoing webhooks (a CLIENT
  span with the W3C context in the request, carts/webhooks.py). The sampler drops CLIENT spans
  that have no parent: a heartbeat's Redis write or a beat query is not a trace of its own.

Importable before Django is set up: settings are read inside the functions.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.propagate import extract, inject
from opentelemetry.propagators.textmap import Getter
from opentelemetry.sdk.trace.sampling import Decision, ParentBased, Sampler, SamplingResult
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from cloudscale_project.correlation import get_correlation_id, set_correlation_id

logger = logging.getLogger(__name__)

TRACER_NAME = "cloudscale"
# Not "correlation_id": Celery sets the AMQP property of that name to the task id, and on the worker
# the property shadows a header of the same name in `task.request`.
CORRELATION_HEADER = "cloudscale_correlation_id"
ATTR_CORRELATION_ID = "cloudscale.correlation_id"
ATTR_TENANT = "cloudscale.tenant"
# Probes and scrapes would drown the traces that matter.
EXCLUDED_URLS = "healthz,readyz,metrics"

_lock = threading.Lock()
_configured = False
_hooks_installed = False


def tracing_enabled() -> bool:
    return os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() not in {"1", "true", "yes", "on"}


def exporter_configured() -> bool:
    """Whether spans have anywhere to go (OTLP or Azure Monitor)."""
    from django.conf import settings

    return bool(settings.OTEL_EXPORTER_OTLP_ENDPOINT or settings.APPLICATIONINSIGHTS_CONNECTION_STRING)


def configure_tracing(
    *, service_name: str = "cloudscale", instrument_django: bool = False, record: bool | None = None
) -> bool:
    """Install the tracer provider and exporters once per process; returns whether tracing is on.

    Tracing is on when an exporter is configured (or `record=True`, for a caller that adds its own
    span processor, as the tests do). Without one nothing is installed: spans that go nowhere were
    built and dropped on every request and task, 15-20 % of a single event's CPU in the API and the
    worker (docs/benchmarks.md), and nothing reads their context (logs carry the correlation id).

    Idempotent: later calls (another entry point, a forked pool child) change nothing, except that
    `instrument_django=True` still adds the Django instrumentation if it was not there yet.
    """
    global _configured
    if not tracing_enabled():
        return False
    with _lock:
        if not _configured:
            if not (exporter_configured() if record is None else record):
                return False
            trace.set_tracer_provider(_build_provider(service_name))
            instrument_clients()
            _configured = True
        if instrument_django:
            _instrument_django()
    return True


def _build_provider(service_name: str) -> Any:
    from django.conf import settings
    from django.core.exceptions import ImproperlyConfigured
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    # OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES, when set, win over our default name.
    attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: service_name}
    # OTEL_TRACES_SAMPLER, when set, wins over ours (the SDK reads it when sampler is None).
    sampler = None if os.environ.get("OTEL_TRACES_SAMPLER") else ParentBased(root=NoOrphanClientSpans())
    provider = TracerProvider(resource=Resource.create(attributes), sampler=sampler)
    if settings.OTEL_EXPORTER_OTLP_ENDPOINT:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        # The exporter reads OTEL_EXPORTER_OTLP_* itself (endpoint + /v1/traces, headers, timeout).
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    if settings.APPLICATIONINSIGHTS_CONNECTION_STRING:
        try:
            from azure.monitor.opentelemetry.exporter import AzureMonitorTraceExporter
        except ImportError:
            raise ImproperlyConfigured(
                "APPLICATIONINSIGHTS_CONNECTION_STRING is set but Azure Monitor support is not "
                "installed: pip install 'cloudscale[azure-monitor]'"
            ) from None
        provider.add_span_processor(
            BatchSpanProcessor(
                AzureMonitorTraceExporter(connection_string=settings.APPLICATIONINSIGHTS_CONNECTION_STRING)
            )
        )
    return provider


class NoOrphanClientSpans(Sampler):
    """Root sampler: a CLIENT span without a parent (Redis, SQL, SDK calls outside any request or
    task) is dropped; everything else starts a trace."""

    def should_sample(  # noqa: PLR0917 - the Sampler interface
        self,
        parent_context: Any,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Any = None,
        links: Any = None,
        trace_state: Any = None,
    ) -> SamplingResult:
        decision = Decision.DROP if kind == SpanKind.CLIENT else Decision.RECORD_AND_SAMPLE
        return SamplingResult(decision, attributes if decision != Decision.DROP else None, trace_state)

    def get_description(self) -> str:
        return "NoOrphanClientSpans"


def instrument_clients() -> None:
    """Spans for the calls to the stores and the broker (see the module docstring). Idempotent."""
    from azure.core.settings import settings as azure_settings
    from django.db.backends.signals import connection_created
    from opentelemetry.instrumentation.redis import RedisInstrumentor

    redis_instrumentor = RedisInstrumentor()
    if not redis_instrumentor.is_instrumented_by_opentelemetry:
        redis_instrumentor.instrument()
    # Cosmos DB and Service Bus: azure-core's tracing plugin (azure-core-tracing-opentelemetry).
    azure_settings.tracing_implementation = "opentelemetry"
    connection_created.connect(_add_sql_spans, weak=False, dispatch_uid="cs-otel-sql")
    from django.db import connections

    for connection in connections.all(initialized_only=True):
        _add_sql_spans(connection=connection)


def _add_sql_spans(sender: Any = None, connection: Any = None, **_: Any) -> None:
    if connection is not None and _sql_span not in connection.execute_wrappers:
        connection.execute_wrappers.append(_sql_span)


_DB_SYSTEMS = {"postgresql": "postgresql", "sqlite": "sqlite"}
_STATEMENT_LIMIT = 2000


def _sql_span(execute: Any, sql: str, params: Any, many: bool, context: Mapping[str, Any]) -> Any:
    """One CLIENT span per statement (Django's execute_wrapper), only inside a trace."""
    if not trace.get_current_span().is_recording():
        return execute(sql, params, many, context)
    connection = context["connection"]
    operation = sql.lstrip().split(None, 1)[0].upper() if sql.strip() else "SQL"
    name = str(connection.settings_dict.get("NAME") or "")
    attributes = {
        "db.system": _DB_SYSTEMS.get(connection.vendor, connection.vendor),
        "db.operation": operation,
        "db.name": name.rsplit("/", 1)[-1],
        "db.statement": sql[:_STATEMENT_LIMIT],
    }
    with tracer().start_as_current_span(f"{operation} {attributes['db.name']}", kind=SpanKind.CLIENT,
                                        attributes=attributes):  # fmt: skip
        return execute(sql, params, many, context)


def _instrument_django() -> None:
    from opentelemetry.instrumentation.django import DjangoInstrumentor

    instrumentor = DjangoInstrumentor()
    if not instrumentor.is_instrumented_by_opentelemetry:
        # Must run before the WSGI handler loads MIDDLEWARE: it prepends its middleware there.
        instrumentor.instrument(excluded_urls=EXCLUDED_URLS, response_hook=_on_django_response)


def _on_django_response(span: Span, request: Any, response: Any) -> None:
    """The request span gets the correlation id and, once DRF authenticated it, the tenant."""
    if not span.is_recording():
        return
    correlation_id = response.get("X-Correlation-ID") if hasattr(response, "get") else None
    if correlation_id:
        span.set_attribute(ATTR_CORRELATION_ID, correlation_id)
    # request.auth is the authenticated API key (tenants.authentication), which names its tenant.
    credential = getattr(request, "auth", None)
    tenant = getattr(getattr(credential, "tenant", credential), "slug", None)
    if tenant:
        span.set_attribute(ATTR_TENANT, tenant)


def tracer() -> trace.Tracer:
    return trace.get_tracer(TRACER_NAME)


@contextmanager
def start_span(
    name: str, attributes: Mapping[str, Any] | None = None, *, kind: SpanKind = SpanKind.INTERNAL
) -> Iterator[Span]:
    """A child span of the work in hand (a no-op span when tracing is not configured).

    Without tracing the no-op span is not made current either: OpenTelemetry's no-op tracer still
    builds a span and attaches a context on every call, 22 µs a call against 2.8 on a slow machine
    (docs/benchmarks.md, "Levers, ninth round"), for a span nothing reads.
    """
    if not _configured:
        yield trace.INVALID_SPAN
        return
    attrs = dict(attributes or {})
    correlation_id = get_correlation_id()
    if correlation_id:
        attrs.setdefault(ATTR_CORRELATION_ID, correlation_id)
    with tracer().start_as_current_span(name, kind=kind, attributes=attrs) as span:
        yield span


# --- Celery: context in message headers ----------------------------------------------------------

_publishing = threading.local()
_running: dict[str, tuple[Span, object]] = {}


class _RequestGetter(Getter[Any]):
    """Reads propagation headers from a Celery task request (headers become request attributes)."""

    def get(self, carrier: Any, key: str) -> list[str] | None:
        value = getattr(carrier, key, None)
        if value is None and isinstance(getattr(carrier, "headers", None), dict):
            value = carrier.headers.get(key)
        return [value] if isinstance(value, str) else None

    def keys(self, carrier: Any) -> list[str]:
        return []


_request_getter = _RequestGetter()


def _end_stale_publish_span() -> None:
    """A publish that raised never sends after_task_publish: end its span at the next publish."""
    stale: Span | None = getattr(_publishing, "span", None)
    if stale is not None:
        stale.set_status(Status(StatusCode.ERROR, "publish did not complete"))
        stale.end()
        _publishing.span = None


def _on_before_publish(sender: str | None = None, body: Any = None, headers: dict[str, Any] | None = None,
                       routing_key: str | None = None, **_: Any) -> None:  # fmt: skip
    if headers is None:
        return
    kwargs = body[1] if isinstance(body, tuple | list) and len(body) > 1 else None
    correlation_id = (
        kwargs.get("correlation_id") if isinstance(kwargs, dict) else None
    ) or get_correlation_id()
    if correlation_id:
        headers.setdefault(CORRELATION_HEADER, correlation_id)
    if not _configured:
        return  # no tracing in this process: a span and its context would go nowhere
    _end_stale_publish_span()
    span = tracer().start_span(
        f"publish {sender}",
        kind=SpanKind.PRODUCER,
        attributes={
            "messaging.system": "celery",
            "messaging.operation.type": "publish",
            "messaging.destination.name": routing_key or "",
            "messaging.message.id": str(headers.get("id", "")),
            ATTR_CORRELATION_ID: correlation_id or "",
        },
    )
    inject(headers, context=trace.set_span_in_context(span))
    _publishing.span = span


def _on_after_publish(**_: Any) -> None:
    span: Span | None = getattr(_publishing, "span", None)
    if span is not None:
        span.end()
        _publishing.span = None


def _on_task_prerun(task_id: str | None = None, task: Any = None, kwargs: Mapping[str, Any] | None = None,
                    **_: Any) -> None:  # fmt: skip
    if task is None or task_id is None:
        return
    request = task.request
    correlation_id = (kwargs or {}).get("correlation_id") or getattr(request, CORRELATION_HEADER, None)
    if isinstance(correlation_id, str) and correlation_id:
        set_correlation_id(correlation_id)
    if not _configured:
        return  # no tracing in this process (see _on_before_publish)
    parent = extract(request, getter=_request_getter)
    attributes: dict[str, Any] = {
        "messaging.system": "celery",
        "messaging.operation.type": "process",
        "messaging.message.id": task_id,
        "celery.task_name": task.name,
        "celery.retries": int(getattr(request, "retries", 0) or 0),
    }
    if isinstance(correlation_id, str):
        attributes[ATTR_CORRELATION_ID] = correlation_id
    tenant = (kwargs or {}).get("tenant")
    if isinstance(tenant, str):
        attributes[ATTR_TENANT] = tenant
    span = tracer().start_span(f"process {task.name}", context=parent, kind=SpanKind.CONSUMER,
                               attributes=attributes)  # fmt: skip
    token = otel_context.attach(trace.set_span_in_context(span, parent))
    _running[task_id] = (span, token)


def _on_task_failure(task_id: str | None = None, exception: BaseException | None = None, **_: Any) -> None:
    entry = _running.get(task_id or "")
    if entry is not None and exception is not None:
        entry[0].record_exception(exception)
        entry[0].set_status(Status(StatusCode.ERROR, type(exception).__name__))


def _on_task_postrun(task_id: str | None = None, state: str | None = None, **_: Any) -> None:
    entry = _running.pop(task_id or "", None)
    if entry is not None:
        span, token = entry
        if state:
            span.set_attribute("celery.state", state)
        otel_context.detach(token)  # type: ignore[arg-type]
        span.end()
    set_correlation_id("")  # the next task of this process starts clean


def _on_worker_start(**_: Any) -> None:
    configure_tracing(service_name="cloudscale-worker")


def install_celery_hooks() -> None:
    """Connect the signal handlers once; called where the Celery app is defined."""
    global _hooks_installed
    if _hooks_installed:
        return
    from celery import signals

    signals.before_task_publish.connect(_on_before_publish, weak=False, dispatch_uid="cs-otel-publish")
    signals.after_task_publish.connect(_on_after_publish, weak=False, dispatch_uid="cs-otel-published")
    signals.task_prerun.connect(_on_task_prerun, weak=False, dispatch_uid="cs-otel-prerun")
    signals.task_failure.connect(_on_task_failure, weak=False, dispatch_uid="cs-otel-failure")
    signals.task_postrun.connect(_on_task_postrun, weak=False, dispatch_uid="cs-otel-postrun")
    # worker_init: the main process (solo/threads pools run tasks there; prefork children inherit
    # the provider, whose batch processor restarts its thread after fork). worker_process_init:
    # prefork children, for the case the parent was not configured.
    signals.worker_init.connect(_on_worker_start, weak=False, dispatch_uid="cs-otel-worker")
    signals.worker_process_init.connect(_on_worker_start, weak=False, dispatch_uid="cs-otel-child")
    _hooks_installed = True
