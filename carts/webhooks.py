"""Signed webhook POSTs: HMAC-SHA256 of the exact body bytes, sent with the stdlib HTTP client.

Receivers verify with `hmac.compare_digest(header, "sha256=" + hmac_sha256(secret, body).hexdigest())`
and can drop repeats by `X-CloudScale-Delivery` (the abandonment's cart id).
"""

from __future__ import annotations

import hashlib
import hmac
import urllib.error
import urllib.request
from dataclasses import dataclass

SIGNATURE_HEADER = "X-CloudScale-Signature"
DELIVERY_HEADER = "X-CloudScale-Delivery"
EVENT_HEADER = "X-CloudScale-Event"
# A receiver that does not answer within this long counts as a failed attempt (retried later).
TIMEOUT_SECONDS = 5.0
_ERROR_TEXT_LIMIT = 500


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is an answer, not an instruction: the body is never re-sent elsewhere."""

    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def sign(*, secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class DeliveryResult:
    ok: bool
    status: int | None
    error: str
    permanent: bool = False  # retrying cannot help (bad URL, no secret)


def webhook_post(*, url: str, secret: str, body: bytes, delivery_id: str, event: str) -> DeliveryResult:
    """POST once; a 2xx is success, anything else (status incl. 3xx, timeout, refused) is a failure."""
    if not url.lower().startswith(("http://", "https://")):
        return DeliveryResult(False, None, f"unsupported webhook URL scheme: {url[:50]!r}", permanent=True)
    request = urllib.request.Request(  # noqa: S310 - scheme checked above
        url,
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "User-Agent": "CloudScale-Webhook/1",
            SIGNATURE_HEADER: sign(secret=secret, body=body),
            DELIVERY_HEADER: delivery_id,
            EVENT_HEADER: event,
        },
    )
    try:
        with _OPENER.open(request, timeout=TIMEOUT_SECONDS) as response:
            return DeliveryResult(True, int(response.status), "")
    except urllib.error.HTTPError as exc:
        return DeliveryResult(False, exc.code, f"HTTP {exc.code}: {exc.reason}"[:_ERROR_TEXT_LIMIT])
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return DeliveryResult(False, None, f"{type(exc).__name__}: {exc}"[:_ERROR_TEXT_LIMIT])
