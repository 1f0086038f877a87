"""OpenTelemetry tracing: one trace from the API request through the broker to the worker and the store.

- `configure_tracing()` installs the tracer provider once per process: wsgi.py calls it for the
  API (with the Django instrumentation), the Celery worker through `worker_init`/`worker_process_init`
  (see `install_celery_hooks`). Exporters: OTLP/HTTP when OTEL_EXPORTER_OTLP_ENDPOINT is set, Azure
  Monitor when APPLICATIONINSIGHTS_CONNECTION_STRING is set, none otherwise (spans are still made,
  so the context still travels; OTEL_SDK_DISABLED=true turns tracing off entirely).
- Publish and consume spans come from Celery signals (below), not opentelemetry-instrumentation-celery:
  its publish hook starts and activates a span it never ends when the task is published by name
  (`send_task`) from a process where that task is not registered, which is exactly how the API
  publishes `events.process_batch`. The W3C trace context and the correlation id travel in the
  message headers; the worker restores both, so log lines and spans of a batch carry the request's ids.
- `start_span()` is for our own work (the store write).

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


def configure_tracing(*, service_name: str = "cloudscale", instrument_django: bool = False) -> bool:
    """Install the tracer provider and exporters once per process; returns whether tracing is on.

    Idempotent: later calls (another entry point, a forked pool child) change nothing, except that
    `instrument_django=True` still adds the Django instrumentation if it was not there yet.
    """
    global _configured
    if not tracing_enabled():
        return False
    with _lock:
        if not _configured:
            trace.set_tracer_provider(_build_provider(service_name))
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
    provider = TracerProvider(resource=Resource.create(attributes))
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
    tenant = getattr(getattr(request, "auth", None), "slug", None)
    if tenant:
        span.set_attribute(ATTR_TENANT, tenant)


def tracer() -> trace.Tracer:
    return trace.get_tracer(TRACER_NAME)


@contextmanager
def start_span(name: str, attributes: Mapping[str, Any] | None = None) -> Iterator[Span]:
    """A child span of the work in hand (a no-op span when tracing is not configured)."""
    attrs = dict(attributes or {})
    correlation_id = get_correlation_id()
    if correlation_id:
        attrs.setdefault(ATTR_CORRELATION_ID, correlation_id)
    with tracer().start_as_current_span(name, attributes=attrs) as span:
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
