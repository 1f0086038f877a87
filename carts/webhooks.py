"""Signed webhook POSTs with a total deadline, to public addresses only, with the stdlib HTTP client.

Signature: `X-CloudScale-Signature: sha256=<hex HMAC-SHA256 of "<timestamp>." + body>` with the
tenant's webhook secret, where `<timestamp>` is `X-CloudScale-Timestamp` (Unix seconds). A receiver
recomputes it over the raw body, compares with `hmac.compare_digest`, refuses a timestamp more than
five minutes from its own clock (replay protection) and drops repeats by `X-CloudScale-Delivery`
(the abandonment's cart id). The recipe is in README.md, "Cart-abandonment webhooks".

Destinations: public addresses only (cloudscale_project/outbound.py); the connection goes to the
address that was checked, so the HTTP client never resolves the name a second time.

Deadline: a socket timeout bounds each read, not the delivery; a receiver that drips one byte a
second would hold it for ever. A watchdog shuts the socket down when the delivery's deadline
passes, which ends any read or write in progress.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import http.client
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from django.conf import settings
from opentelemetry.propagate import inject
from opentelemetry.trace import SpanKind, Status, StatusCode

from cloudscale_project.observability import start_span
from cloudscale_project.outbound import address_refusal, parse_target, resolve

SIGNATURE_HEADER = "X-CloudScale-Signature"
TIMESTAMP_HEADER = "X-CloudScale-Timestamp"
DELIVERY_HEADER = "X-CloudScale-Delivery"
EVENT_HEADER = "X-CloudScale-Event"
# One socket operation (connect, one read) waits at most this long; the delivery as a whole at
# most settings.WEBHOOK_DEADLINE_SECONDS.
TIMEOUT_SECONDS = 5.0
_ERROR_TEXT_LIMIT = 500
# Of the answer only the status matters; a little of the body is read so the receiver's write ends.
_BODY_READ_LIMIT = 4096


def sign(*, secret: str, timestamp: int, body: bytes) -> str:
    """The signature of one attempt: the timestamp is signed with the body, so an old request
    cannot be replayed with a fresh timestamp."""
    message = str(timestamp).encode() + b"." + body
    return "sha256=" + hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class DeliveryResult:
    ok: bool
    status: int | None
    error: str
    permanent: bool = False  # retrying cannot help (bad or refused URL, no secret, disabled tenant)
    # The request may have reached the receiver (it was being sent or answered when it ended):
    # whether the receiver acted on it is unknown, so resending it may deliver it twice.
    unknown: bool = False


class _Watchdog:
    """Shuts a socket down at a deadline: a blocked read or write then returns at once."""

    def __init__(self, sock: socket.socket, seconds: float) -> None:
        self.fired = False
        self._sock = sock
        self._timer = threading.Timer(max(0.0, seconds), self._fire)
        self._timer.daemon = True
        self._timer.start()

    def watch(self, sock: socket.socket) -> None:
        """Watch this socket instead (a TLS socket takes over the plain one's descriptor)."""
        self._sock = sock

    def _fire(self) -> None:
        self.fired = True
        with contextlib.suppress(OSError):  # already closed
            self._sock.shutdown(socket.SHUT_RDWR)

    def cancel(self) -> None:
        self._timer.cancel()


def _connect(addresses: list[str], port: int, deadline: float) -> socket.socket:
    error: OSError = OSError("no address")
    for address in addresses:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("deadline passed while connecting")
        try:
            return socket.create_connection((address, port), timeout=min(TIMEOUT_SECONDS, remaining))
        except OSError as exc:
            error = exc
    raise error


def _checked_target(url: str) -> tuple[str, str, int, list[str]] | DeliveryResult:
    """Scheme, host, port and the addresses to connect to, or why not to send at all."""
    try:
        scheme, host, port = parse_target(url)
    except ValueError as exc:
        return DeliveryResult(False, None, f"webhook URL {url[:80]!r}: {exc}", permanent=True)
    try:
        addresses = resolve(host, port)
    except OSError as exc:  # DNS may recover: retried
        return DeliveryResult(False, None, f"cannot resolve {host!r}: {exc}"[:_ERROR_TEXT_LIMIT])
    for address in addresses:
        refusal = address_refusal(address)
        if refusal:
            return DeliveryResult(False, None, refusal, permanent=True)
    return scheme, host, port, addresses


def webhook_post(
    *, url: str, secret: str, body: bytes, delivery_id: str, event: str, deadline_seconds: float | None = None
) -> DeliveryResult:
    """POST once within the deadline; a 2xx is success, anything else is a failure, `unknown` when
    the request may have reached the receiver without an answer coming back. Traced as a client
    span whose context travels in the request (W3C traceparent), so a receiver may continue it."""
    attributes = {
        "http.request.method": "POST",
        "url.full": url[:2000],
        "cloudscale.webhook.delivery": delivery_id,
    }
    with start_span("webhook POST", attributes, kind=SpanKind.CLIENT) as span:
        trace_headers: dict[str, str] = {}
        inject(trace_headers)
        result = _post_once(
            url=url,
            secret=secret,
            body=body,
            delivery_id=delivery_id,
            event=event,
            deadline_seconds=deadline_seconds,
            trace_headers=trace_headers,
        )
        if result.status is not None:
            span.set_attribute("http.response.status_code", result.status)
        if not result.ok:
            span.set_status(Status(StatusCode.ERROR, result.error[:200]))
        return result


def _post_once(
    *,
    url: str,
    secret: str,
    body: bytes,
    delivery_id: str,
    event: str,
    deadline_seconds: float | None,
    trace_headers: dict[str, str],
) -> DeliveryResult:
    deadline_seconds = settings.WEBHOOK_DEADLINE_SECONDS if deadline_seconds is None else deadline_seconds
    deadline = time.monotonic() + deadline_seconds
    target = _checked_target(url)
    if isinstance(target, DeliveryResult):
        return target
    scheme, host, port, addresses = target
    try:
        sock = _connect(addresses, port, deadline)
    except OSError as exc:
        return DeliveryResult(False, None, f"connect: {type(exc).__name__}: {exc}"[:_ERROR_TEXT_LIMIT])

    timestamp = int(time.time())
    connection: http.client.HTTPConnection | None = None
    watchdog = _Watchdog(sock, deadline - time.monotonic())
    started_sending = False
    try:
        if scheme == "https":
            context = ssl.create_default_context()
            connection = http.client.HTTPSConnection(host, port, timeout=TIMEOUT_SECONDS, context=context)
            connection.sock = context.wrap_socket(sock, server_hostname=host)
            watchdog.watch(connection.sock)
        else:
            connection = http.client.HTTPConnection(host, port, timeout=TIMEOUT_SECONDS)
            connection.sock = sock  # already connected to the checked address: no second lookup
        started_sending = True
        connection.request(
            "POST",
            urlsplit(url)._replace(scheme="", netloc="", fragment="").geturl() or "/",
            body=body,
            headers={
                "Content-Type": "application/json",
                "User-Agent": "CloudScale-Webhook/1",
                SIGNATURE_HEADER: sign(secret=secret, timestamp=timestamp, body=body),
                TIMESTAMP_HEADER: str(timestamp),
                DELIVERY_HEADER: delivery_id,
                EVENT_HEADER: event,
                **trace_headers,
            },
        )
        response = connection.getresponse()
        if watchdog.fired:
            # The deadline cut the answer short; http.client takes an early end of the headers
            # for their end, so a status read here is not one the receiver finished sending.
            raise http.client.IncompleteRead(b"")
        status = int(response.status)
        # Redirects are not followed: a redirect is an answer, and the body is never re-sent elsewhere.
        with contextlib.suppress(OSError, http.client.HTTPException):
            response.read(_BODY_READ_LIMIT)  # the status is the answer; a body cut short changes nothing
        if 200 <= status < 300:
            return DeliveryResult(True, status, "")
        return DeliveryResult(False, status, f"HTTP {status}: {response.reason}"[:_ERROR_TEXT_LIMIT])
    except (OSError, http.client.HTTPException, ValueError) as exc:
        what = (
            f"no answer within the {deadline_seconds:g} s deadline"
            if watchdog.fired
            else f"{type(exc).__name__}: {exc}"
        )
        return DeliveryResult(
            False,
            None,
            (f"outcome unknown: {what}" if started_sending else what)[:_ERROR_TEXT_LIMIT],
            unknown=started_sending,
        )
    finally:
        watchdog.cancel()
        if connection is not None:
            connection.close()
        sock.close()
