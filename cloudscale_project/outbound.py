"""Where the platform may send requests on a tenant's behalf (webhooks): public addresses only.

A URL a tenant gives us is resolved here, and every address it resolves to must be global.
Loopback, private, link-local (cloud metadata endpoints such as 169.254.169.254), shared
(100.64/10), unique-local IPv6, reserved, unspecified and multicast addresses are refused unless
`CLOUDSCALE_WEBHOOK_ALLOW_PRIVATE` is set (a receiver on the operator's own network). The sender
must connect to an address it checked, never resolve the name a second time (DNS rebinding).

Here, in the ground layer, because both the tenant admin (where a URL is entered) and the webhook
sender (where it is used) check it.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

from django.conf import settings

_ERROR_TEXT_LIMIT = 500


def address_refusal(address: str) -> str | None:
    """Why a webhook may not go to this address (None: it may)."""
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if (ip.is_global and not ip.is_multicast) or settings.WEBHOOK_ALLOW_PRIVATE:
        return None
    kind = (
        "loopback" if ip.is_loopback
        else "link-local (cloud metadata)" if ip.is_link_local
        else "private" if ip.is_private
        else "non-public"
    )  # fmt: skip
    return f"webhook address {address} is {kind}: refused (CLOUDSCALE_WEBHOOK_ALLOW_PRIVATE allows it)"


def parse_target(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of an http(s) URL; ValueError for anything else."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in {"http", "https"}:
        raise ValueError(f"unsupported scheme {parts.scheme!r}")
    if not parts.hostname:
        raise ValueError("no host")
    return scheme, parts.hostname, parts.port or (443 if scheme == "https" else 80)


def resolve(host: str, port: int) -> list[str]:
    """Every address the host resolves to, in the resolver's order, each once."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def webhook_url_refusal(url: str) -> str | None:
    """Why a webhook URL cannot be used (scheme, host, or an address it resolves to); None if it can.
    Resolves the host, so a name that does not resolve is refused too."""
    try:
        _, host, port = parse_target(url)
        addresses = resolve(host, port)
    except (ValueError, OSError) as exc:
        return f"webhook URL {url[:80]!r} cannot be used: {exc}"[:_ERROR_TEXT_LIMIT]
    refusals = [refusal for refusal in map(address_refusal, addresses) if refusal]
    return refusals[0] if refusals else None
