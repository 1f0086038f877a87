"""`manage.py tenant create|create-key|list|rotate-key|disable|enable|retire`."""

from __future__ import annotations

import argparse
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from tenants.models import ApiKey, Tenant
from tenants.services import (
    TenantRetired,
    tenant_create,
    tenant_create_key,
    tenant_retire,
    tenant_rotate_key,
    tenant_set_active,
)


class Command(BaseCommand):
    help = (
        "Manage tenants and their API keys. Commands that issue a key print it alone on the last line. "
        "Example: python manage.py tenant create acme --name 'Acme Corp'; "
        "python manage.py tenant create-key acme --scope ingest"
    )

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
        create = sub.add_parser("create", help="create a tenant and its first API key")
        create.add_argument("slug", help="short unique id, e.g. acme")
        create.add_argument("--name", default="", help="display name (defaults to the slug)")
        create.add_argument("--webhook-url", default="", help="URL that receives cart-abandonment webhooks")
        create_key = sub.add_parser(
            "create-key", help="issue a further key; `ingest` keys may only send events (for SDKs in apps)"
        )
        create_key.add_argument("slug")
        create_key.add_argument("--scope", required=True, choices=ApiKey.Scope.values)
        sub.add_parser("list", help="list tenants")
        rotate = sub.add_parser("rotate-key", help="revoke the tenant's keys and issue a new one")
        rotate.add_argument("slug")
        disable = sub.add_parser("disable", help="disable a tenant: its keys then get 403")
        disable.add_argument("slug")
        enable = sub.add_parser("enable", help="enable a disabled tenant")
        enable.add_argument("slug")
        retire = sub.add_parser(
            "retire",
            help="retire a tenant for good: keys revoked, slug never reused (tenants are not deleted)",
        )
        retire.add_argument("slug")
        for action in (create, create_key, rotate, disable, enable, retire):
            action.formatter_class = argparse.ArgumentDefaultsHelpFormatter

    def handle(self, *args: Any, **options: Any) -> None:
        action = options["action"]
        try:
            if action == "create":
                issued = tenant_create(
                    slug=options["slug"], name=options["name"], webhook_url=options["webhook_url"]
                )
                self.stderr.write(f"Created tenant {issued.tenant.slug!r}. Its API key (shown once):")
                self.stdout.write(issued.key)
            elif action == "rotate-key":
                issued = tenant_rotate_key(slug=options["slug"])
                self.stderr.write(
                    f"Revoked the old keys of {issued.tenant.slug!r}. New API key (shown once):"
                )
                self.stdout.write(issued.key)
            elif action == "create-key":
                issued = tenant_create_key(slug=options["slug"], scope=options["scope"])
                self.stderr.write(
                    f"New {options['scope']} API key for {issued.tenant.slug!r} (shown once; "
                    "its other keys stay valid):"
                )
                self.stdout.write(issued.key)
            elif action == "retire":
                tenant = tenant_retire(slug=options["slug"])
                self.stdout.write(f"{tenant.slug}: retired (keys revoked; the slug stays taken)")
            elif action in {"disable", "enable"}:
                tenant = tenant_set_active(slug=options["slug"], active=action == "enable")
                self.stdout.write(f"{tenant.slug}: {'active' if tenant.active else 'disabled'}")
            else:
                self._list()
        except TenantRetired as exc:
            raise CommandError(str(exc)) from None
        except Tenant.DoesNotExist:
            raise CommandError(f"No tenant with slug {options['slug']!r}.") from None
        except ValidationError as exc:
            raise CommandError(
                "; ".join(f"{k}: {' '.join(v)}" for k, v in exc.message_dict.items())
            ) from None

    def _list(self) -> None:
        tenants = Tenant.objects.all()
        self.stdout.write(f"{'SLUG':<24} {'STATE':<9} {'KEYS':<5} NAME")
        for tenant in tenants:
            keys = tenant.api_keys.filter(revoked_at__isnull=True).count()
            state = "retired" if tenant.retired_at else "active" if tenant.active else "disabled"
            self.stdout.write(f"{tenant.slug:<24} {state:<9} {keys:<5} {tenant.name}")
