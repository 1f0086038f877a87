"""Tenant authentication by API key: `Authorization: Bearer <key>` or `X-API-Key: <key>`."""

from __future__ import annotations

from typing import Any

from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication
from rest_framework.permissions import BasePermission
from rest_framework.request import Request

from tenants.models import ApiKey, Tenant
from tenants.services import api_key_lookup


def api_key_from_headers(headers: Any) -> str | None:
    authorization = headers.get("Authorization", "")
    if authorization:
        scheme, _, credentials = authorization.partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            return str(credentials.strip())
    key = headers.get("X-API-Key", "")
    return str(key.strip()) if key and key.strip() else None


class ApiKeyAuthentication(BaseAuthentication):
    """Sets `request.auth` to the ApiKey (its tenant and scope). Missing or wrong key → 401;
    disabled tenant → 403."""

    def authenticate(self, request: Request) -> tuple[None, ApiKey] | None:
        key = api_key_from_headers(request.headers)
        if key is None:
            return None  # DRF answers NotAuthenticated (401) via the permission classes
        return (None, authenticate_key(key))

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="api"'


def authenticate_key(key: str) -> ApiKey:
    """The live key, or the 401 (unknown or revoked key) / 403 (disabled tenant) to answer."""
    api_key = api_key_lookup(key)
    if api_key is None:
        raise exceptions.AuthenticationFailed("Invalid API key.")
    if not api_key.tenant.active:
        raise exceptions.PermissionDenied(f"Tenant {api_key.tenant.slug!r} is disabled.")
    return api_key


class CanIngest(BasePermission):
    """Any live key of an active tenant may send events (`ingest` and `full` scopes)."""

    message = "Authentication credentials were not provided."

    def has_permission(self, request: Request, view: Any) -> bool:
        return isinstance(request.auth, ApiKey)


class CanRead(BasePermission):
    """Reading a tenant's data needs a `full` key: `ingest` keys live in apps anyone can read.

    The default permission of every API view, so a new read endpoint is closed to ingest keys
    unless it says otherwise."""

    def has_permission(self, request: Request, view: Any) -> bool:
        if not isinstance(request.auth, ApiKey):
            return False  # DRF answers 401 (no credentials) before this message is used
        if request.auth.scope != ApiKey.Scope.FULL:
            raise exceptions.PermissionDenied(
                "This API key may only send events (scope 'ingest'); reading needs a 'full' key."
            )
        return True


class CanIngestOrRead(CanRead):
    """For a view that sends on POST and reads on GET (`/api/events`)."""

    def has_permission(self, request: Request, view: Any) -> bool:
        if request.method == "POST":
            return CanIngest().has_permission(request, view)
        return super().has_permission(request, view)


def tenant_of(request: Request) -> Tenant:
    """The authenticated tenant of a request that passed CanIngest or CanRead."""
    api_key = request.auth
    if not isinstance(api_key, ApiKey):
        raise exceptions.NotAuthenticated()
    return api_key.tenant
