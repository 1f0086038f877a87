from __future__ import annotations

from django.apps import AppConfig


class CartsConfig(AppConfig):
    name = "carts"
    verbose_name = "Cart abandonment"
