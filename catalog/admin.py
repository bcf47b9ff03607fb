from __future__ import annotations

from django.contrib import admin, messages
from django.shortcuts import redirect
from django.urls import path
from django.views.decorators.http import require_POST

from accounts.admin_base import TeamScopedAdmin
from catalog import services
from catalog.models import BaseModel
from core.commands import format_bytes, format_count


@admin.register(BaseModel)
class BaseModelAdmin(TeamScopedAdmin):
    include_global = True
    list_display = ["name", "kind", "params", "size", "architecture", "format", "owner", "available_badge",
                    "last_scanned_at"]
    list_filter = ["kind", "available", "format", "bundled"]
    search_fields = ["name", "architecture", "path"]
    list_select_related = ["team"]
    readonly_fields = ["kind", "path", "source_path", "format", "architecture", "model_type", "parameter_count",
                       "size_bytes", "tokenizer_present", "has_chat_template", "config", "bundled", "available",
                       "created_at", "last_scanned_at", "created_by"]
    # The team is read-only: moving a global model into a team (or between teams) would hide it from the
    # others and break their tasks. The name changes only through base_model_rename.
    fields = ["name", "team", *readonly_fields]
    actions = ["rescan"]
    change_list_template = "admin/catalog/basemodel/change_list.html"

    def has_add_permission(self, request):
        # Models are registered by scanning folders on the server, not typed in.
        return False

    def get_readonly_fields(self, request, obj=None):
        return ["team", *self.readonly_fields]

    def save_model(self, request, obj, form, change):
        # Never obj.save(): a scan writes the other columns; the rename rule (and its audit entry) is the service's.
        if change and "name" in form.changed_data:
            renamed = self.call_service(request, services.base_model_rename, user=request.user,
                                        model=BaseModel.objects.get(pk=obj.pk), name=form.cleaned_data["name"])
            if renamed is None:
                request._service_refused = True

    def log_change(self, request, obj, message):
        # base_model_rename writes the history entry (with the old and new name).
        return None

    def response_change(self, request, obj):
        if getattr(request, "_service_refused", False):
            return redirect(request.path)  # the error message is shown; nothing changed
        return super().response_change(request, obj)

    @admin.display(description="Parameters", ordering="parameter_count")
    def params(self, obj: BaseModel) -> str:
        return format_count(obj.parameter_count)

    @admin.display(description="Size", ordering="size_bytes")
    def size(self, obj: BaseModel) -> str:
        return format_bytes(obj.size_bytes)

    @admin.display(description="Team", ordering="team__name")
    def owner(self, obj: BaseModel) -> str:
        return obj.team.name if obj.team_id else "all teams"

    @admin.display(description="Available", boolean=True, ordering="available")
    def available_badge(self, obj: BaseModel) -> bool:
        return obj.available

    @admin.action(description="Rescan model folders (MODEL_DIRS, DATA_DIR/models, bundled)")
    def rescan(self, request, queryset):
        report = self.call_service(request, services.base_models_scan, user=request.user)
        if report is None:
            return
        summary = ", ".join(f"{a} {report.count(a)}" for a in
                            ("added", "converted", "updated", "unchanged", "unavailable", "error") if report.count(a))
        level = messages.WARNING if report.count("error") else messages.SUCCESS
        self.message_user(request, f"Scan finished: {summary or 'nothing found'}.", level=level)
        for row in report.rows:
            if row.action == "error":
                self.message_user(request, f"{row.name}: {row.message}", level=messages.ERROR)

    def get_urls(self):
        extra = [path("rescan/", self.admin_site.admin_view(require_POST(self.rescan_view)), name="catalog_basemodel_rescan")]
        return extra + super().get_urls()

    def rescan_view(self, request):
        """The "Rescan" button of the list page (an action would need rows selected)."""
        self.rescan(request, self.get_queryset(request).none())
        return redirect("admin:catalog_basemodel_changelist")
