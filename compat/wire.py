"""The SDKs' wire format: bounded body reading and decompression, JSON, and where the key is.

Every limit is checked before memory is spent on it: the raw body is read at most one byte past
the limit, and a compressed body is inflated in steps that stop one byte past the limit, so a
gzip bomb costs at most the limit, never its full inflated size.
"""

from __future__ import annotations

import base64
import binascii
import zlib
from typing import Any

import orjson
from django.http import HttpRequest

from cloudscale_project.errors import ApplicationError, ErrorDetail, MalformedJson, PayloadTooLarge
from tenants.authentication import api_key_from_headers

_GZIP_MAGIC = b"\x1f\x8b"
# zlib's wbits: 16 + 15 reads a gzip stream; 15 a zlib-wrapped deflate stream; -15 raw deflate.
_GZIP_WBITS = 31
_ZLIB_WBITS = 15
_RAW_DEFLATE_WBITS = -15


def too_large(size_note: str, limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"request body is {size_note}; the limit is {limit} bytes after decompression",
        [ErrorDetail("body", f"larger than {limit} bytes")],
    )


def read_body(request: HttpRequest, *, limit: int) -> bytes:
    """The raw request body, at most `limit` bytes (413 beyond), read from the stream directly:
    Django's `request.body` stops at DATA_UPLOAD_MAX_MEMORY_SIZE, the native API's 1 MiB."""
    declared = request.META.get("CONTENT_LENGTH") or "0"
    if declared.isdigit() and int(declared) > limit:
        raise too_large(f"{int(declared)} bytes", limit)  # refuse before reading a byte of it
    body = request.read(limit + 1)
    if len(body) > limit:
        raise too_large(f"over {limit} bytes", limit)
    return body


def _inflate(data: bytes, *, wbits: int, limit: int) -> bytes:
    out = bytearray()
    while True:
        inflater = zlib.decompressobj(wbits)
        try:
            out += inflater.decompress(data, limit + 1 - len(out))
            if len(out) > limit or inflater.unconsumed_tail:
                raise too_large(f"over {limit} bytes once decompressed", limit)
            out += inflater.flush()
        except zlib.error as exc:
            raise MalformedJson(f"request body could not be decompressed: {exc}") from None
        if len(out) > limit:
            raise too_large(f"over {limit} bytes once decompressed", limit)
        if not inflater.eof:
            raise MalformedJson("request body could not be decompressed: the stream is truncated")
        # A gzip file may hold several members one after the other (RFC 1952 2.2).
        data = inflater.unused_data.lstrip(b"\x00")
        if wbits != _GZIP_WBITS or not data:
            return bytes(out)


def decode_body(body: bytes, *, content_encoding: str, limit: int) -> bytes:
    """The body as sent before compression. gzip is recognised by its magic bytes too: RudderStack's
    Node SDK, for one, sends gzip labelled `application/x-www-form-urlencoded`."""
    encoding = content_encoding.strip().lower()
    if encoding in {"gzip", "x-gzip"} or body.startswith(_GZIP_MAGIC):
        return _inflate(body, wbits=_GZIP_WBITS, limit=limit)
    if encoding == "deflate":
        # HTTP's "deflate" is zlib-wrapped (RFC 9110 8.4.1.2); some clients send it raw.
        try:
            return _inflate(body, wbits=_ZLIB_WBITS, limit=limit)
        except MalformedJson:
            return _inflate(body, wbits=_RAW_DEFLATE_WBITS, limit=limit)
    if encoding not in {"", "identity"}:
        raise ApplicationError(
            f"Content-Encoding {content_encoding!r} is not supported; use gzip, deflate or none",
            [ErrorDetail("Content-Encoding", "expected gzip, deflate or identity")],
            status=415,
            code="unsupported_media_type",
        )
    return body


def parse_json(data: bytes) -> Any:
    if not data.strip():
        raise MalformedJson("request body is empty")
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise MalformedJson(f"request body is not valid JSON: {exc}") from None


def basic_auth_user(authorization: str) -> str | None:
    """The user name of `Authorization: Basic base64(user:password)`: the write key of Segment and
    RudderStack (with an empty password)."""
    scheme, _, credentials = authorization.partition(" ")
    if scheme.lower() != "basic" or not credentials.strip():
        return None
    try:
        decoded = base64.b64decode(credentials.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    user = decoded.partition(":")[0].strip()
    return user or None


def _string(value: Any) -> str | None:
    return value.strip() if isinstance(value, str) and value.strip() else None


def segment_key(request: HttpRequest, payload: Any) -> str | None:
    """Basic auth user name, else body `writeKey`, else the native headers (Bearer, X-API-Key)."""
    key = basic_auth_user(request.headers.get("Authorization", ""))
    if key is None and isinstance(payload, dict):
        key = _string(payload.get("writeKey"))
    return key or api_key_from_headers(request.headers)


def posthog_key(request: HttpRequest, payload: Any, messages: list[Any]) -> str | None:
    """Body `api_key` or `token`, else a message's own `api_key`/`properties.token` (posthog-js puts
    the token in each event), else `Authorization: Bearer`."""
    candidates: list[Any] = []
    if isinstance(payload, dict):
        candidates += [payload.get("api_key"), payload.get("token")]
    if messages and isinstance(messages[0], dict):
        first = messages[0]
        properties = first.get("properties")
        candidates += [first.get("api_key"), first.get("token")]
        if isinstance(properties, dict):
            candidates.append(properties.get("token"))
    for candidate in candidates:
        key = _string(candidate)
        if key:
            return key
    return api_key_from_headers(request.headers)
