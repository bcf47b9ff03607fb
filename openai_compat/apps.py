from __future__ import annotations

from django.apps import AppConfig


class OpenAICompatConfig(AppConfig):
    name = "openai_compat"
    verbose_name = "OpenAI-compatible API"
