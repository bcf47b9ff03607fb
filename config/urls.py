"""URL map: the admin at /admin/, our JSON API at /api/, the OpenAI-compatible API at /v1/."""

from __future__ import annotations

from django.contrib import admin
from django.urls import path
from django.views.generic import RedirectView

from config.api import api, v1
from console import dashboard

admin.site.site_header = "LoRA Studio"
admin.site.site_title = "LoRA Studio"
admin.site.index_title = "Fine-tuning console"

urlpatterns = [
    path("", RedirectView.as_view(url="/admin/", permanent=False)),
    # The admin index with the dashboard (before admin.site.urls, so "admin:index" renders it).
    path("admin/", admin.site.admin_view(dashboard.index_view)),
    path("admin/dashboard/", admin.site.admin_view(dashboard.fragment_view), name="admin-dashboard"),
    path("admin/", admin.site.urls),
    path("api/", api.urls),
    path("v1/", v1.urls),
]
