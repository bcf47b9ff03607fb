"""URL map: the admin at /admin/, our JSON API at /api/, the OpenAI-compatible API at /v1/."""

from __future__ import annotations

from django.contrib import admin
from django.urls import path
from django.views.generic import RedirectView

from config.api import api, v1

admin.site.site_header = "LoRA Studio"
admin.site.site_title = "LoRA Studio"
admin.site.index_title = "Fine-tuning console"

urlpatterns = [
    path("", RedirectView.as_view(url="/admin/", permanent=False)),
    path("admin/", admin.site.urls),
    path("api/", api.urls),
    path("v1/", v1.urls),
]
