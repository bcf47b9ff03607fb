from __future__ import annotations

from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "accounts"
    verbose_name = "Teams and access"

    def ready(self) -> None:
        from django.contrib import admin

        from accounts import signals  # noqa: F401
        from accounts.throttle import ThrottledAdminAuthenticationForm

        admin.site.login_form = ThrottledAdminAuthenticationForm
