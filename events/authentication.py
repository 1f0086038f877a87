"""Tenant authentication by API key: `Authorization: Bearer <key>` or `X-API-Key: <key>`."""

from __future__ import annotations

from typing import Any

from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication
from rest_framework.permissions import BasePermission
from rest_framework.request import Request

from events.models import Tenant
from events.tenants import tenant_for_key

# Set on the HttpRequest by the rate-limit middleware: (key, tenant or None).
LOOKED_UP_ATTRIBUTE = "_cloudscale_key_lookup"


def api_key_from_headers(headers: Any) -> str | None:
    authorization = headers.get("Authorization", "")
    if authorization:
        scheme, _, credentials = authorization.partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            return str(credentials.strip())
    key = headers.get("X-API-Key", "")
    return str(key.strip()) if key and key.strip() else None


class ApiKeyAuthentication(BaseAuthentication):
    """Sets `request.auth` to the Tenant. Missing or wrong key → 401; disabled tenant → 403."""

    def authenticate(self, request: Request) -> tuple[None, Tenant] | None:
        key = api_key_from_headers(request.headers)
        if key is None:
            return None  # DRF answers NotAuthenticated (401) via IsTenant
        # The rate-limit middleware already looked this key up for this request: reuse it.
        looked_up = getattr(request._request, LOOKED_UP_ATTRIBUTE, None)
        tenant = looked_up[1] if looked_up is not None and looked_up[0] == key else tenant_for_key(key)
        if tenant is None:
            raise exceptions.AuthenticationFailed("Invalid API key.")
        if not tenant.active:
            raise exceptions.PermissionDenied(f"Tenant {tenant.slug!r} is disabled.")
        return (None, tenant)

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="api"'


class IsTenant(BasePermission):
    message = "Authentication credentials were not provided."

    def has_permission(self, request: Request, view: Any) -> bool:
        return isinstance(request.auth, Tenant)


def tenant_of(request: Request) -> Tenant:
    """The authenticated tenant of a request that passed IsTenant."""
    tenant = request.auth
    if not isinstance(tenant, Tenant):
        raise exceptions.NotAuthenticated()
    return tenant
