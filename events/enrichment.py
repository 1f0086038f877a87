"""Pure enrichment of a validated event (no I/O): server time, client address, skew correction."""

from __future__ import annotations

import ipaddress
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from functools import cache, lru_cache
from typing import Any

from django.conf import settings
from django.http import HttpRequest

from cloudscale_project.timeutil import isoformat_z, parse_iso
from events.schemas import EventIn

# A client clock may run ahead; beyond this the timestamp is not believed (docs/api.md, "Events").
MAX_FUTURE_SKEW = timedelta(hours=23)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def enrich_event(
    event: EventIn,
    *,
    tenant: str,
    received_at: datetime,
    ip: str,
    user_agent: str,
    correlation_id: str,
) -> dict[str, Any]:
    """The enriched event that travels in the message and is stored.

    With `sent_at`, the client's clock skew (received_at - sent_at) is added to its timestamp.
    A timestamp more than 23 h ahead of the server becomes `received_at` (flagged).
    """
    timestamp = received_at
    skew_corrected = False
    out_of_range = False
    if event.timestamp is not None:
        # A time beyond year 1..9999 once in UTC or once corrected is not a time we can keep.
        try:
            timestamp = parse_iso(event.timestamp)
            if event.sent_at is not None:
                timestamp += received_at - parse_iso(event.sent_at)
                skew_corrected = True
        except OverflowError:
            timestamp, skew_corrected, out_of_range = received_at, False, True
    clamped = out_of_range or timestamp - received_at > MAX_FUTURE_SKEW
    if clamped:
        timestamp = received_at
    return {
        "event_id": event.event_id or str(uuid.uuid4()),
        "event_type": event.event_type,
        "user_id": event.user_id,
        "session_id": event.session_id,
        "properties": event.properties,
        "timestamp": isoformat_z(timestamp),
        "client_timestamp": event.timestamp,
        "sent_at": event.sent_at,
        "received_at": _received_text(received_at),
        "skew_corrected": skew_corrected,
        "timestamp_clamped": clamped,
        "ip": ip,
        # A NUL could never be stored on PostgreSQL; it is not part of any real user agent.
        "user_agent": user_agent.replace("\x00", "")[:512],
        "correlation_id": correlation_id,
        "tenant": tenant,
    }


# Every event of a request has the same received_at: written once, not once per event.
_received_text = lru_cache(maxsize=64)(isoformat_z)


@cache
def trusted_proxies() -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(cidr, strict=False) for cidr in settings.TRUSTED_PROXIES)


def _is_trusted(address: str, networks: Sequence[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in networks)


def client_ip_from(peer: str, forwarded_for: str | None, networks: Sequence[Network]) -> str:
    """The socket peer, unless it is a trusted proxy: then X-Forwarded-For, right to left,
    skipping trusted hops. A forged header from an untrusted peer changes nothing."""
    if not forwarded_for or not _is_trusted(peer, networks):
        return peer
    hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
    for hop in reversed(hops):
        if not _is_trusted(hop, networks):
            try:
                return str(ipaddress.ip_address(hop))
            except ValueError:
                return peer  # garbage in the header: fall back to what we know
    return hops[0] if hops else peer


# Where a request keeps its client address once worked out.
_CLIENT_IP_ATTRIBUTE = "_cloudscale_client_ip"


def client_ip(request: HttpRequest) -> str:
    """The request's client address (`client_ip_from`), worked out once a request: its rate limit
    and its ingestion both ask (`/api/` and SDK endpoints alike), and with a trusted proxy it
    parses two addresses."""
    known: str | None = getattr(request, _CLIENT_IP_ATTRIBUTE, None)
    if known is None:
        known = client_ip_from(
            request.META.get("REMOTE_ADDR", ""), request.META.get("HTTP_X_FORWARDED_FOR"), trusted_proxies()
        )
        setattr(request, _CLIENT_IP_ATTRIBUTE, known)
    return known
