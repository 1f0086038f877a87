"""Tenant authentication by API key: `Authorization: Bearer <key>` or `X-API-Key: <key>`."""

from __future__ import annotations

from typing import Any

from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication
from rest_framework.permissions import BasePermission
from rest_framework.request import Request

from events.models import Tenant
from events.tenants import tenant_for_key


def api_key_from_headers(headers: Any) -> str | None:
    authorization = headers.get("Authorization", "")
    if authorization:
        scheme, _, credentials = authorization.partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            return str(credentials.strip())
    key = headers.get("X-API-Key", "")
    return str(key.strip()) if key and key.strip() else None


def authenticate_api_key(key: str) -> Tenant:
    """The tenant of a presented key. Wrong key → AuthenticationFailed (401); disabled tenant →
    PermissionDenied (403). Every way a key arrives (headers here, SDK bodies and Basic auth in
    compat/) ends in this one check."""
    tenant = tenant_for_key(key)
    if tenant is None:
        raise exceptions.AuthenticationFailed("Invalid API key.")
    if not tenant.active:
        raise exceptions.PermissionDenied(f"Tenant {tenant.slug!r} is disabled.")
    return tenant


class ApiKeyAuthentication(BaseAuthentication):
    """Sets `request.auth` to the Tenant. Missing or wrong key → 401; disabled tenant → 403."""

    def authenticate(self, request: Request) -> tuple[None, Tenant] | None:
        key = api_key_from_headers(request.headers)
        if key is None:
            return None  # DRF answers NotAuthenticated (401) via IsTenant
        return (None, authenticate_api_key(key))

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
