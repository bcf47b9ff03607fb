from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpResponse, HttpResponseNotAllowed, JsonResponse, StreamingHttpResponse
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html

from accounts import visibility
from accounts.models import Team
from core.admin import TeamScopedAdmin
from core.commands import format_bytes, format_count
from training import services
from training.models import Adapter, BaseModel, Checkpoint, TrainingEvent, TrainingTask


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
    fields = ["name", "team", *readonly_fields]
    actions = ["rescan"]
    change_list_template = "admin/training/basemodel/change_list.html"

    def has_add_permission(self, request):
        # Models are registered by scanning folders on the server, not typed in.
        return False

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
        if not request.user.is_superuser and not visibility.teams(request.user, write=True).exists():
            self.message_user(request, "Scanning needs a member or admin role.", level=messages.ERROR)
            return
        report = services.base_models_scan(user=request.user)
        summary = ", ".join(f"{a} {report.count(a)}" for a in
                            ("added", "converted", "updated", "unchanged", "unavailable", "error") if report.count(a))
        level = messages.WARNING if report.count("error") else messages.SUCCESS
        self.message_user(request, f"Scan finished: {summary or 'nothing found'}.", level=level)
        for row in report.rows:
            if row.action == "error":
                self.message_user(request, f"{row.name}: {row.message}", level=messages.ERROR)

    def get_urls(self):
        extra = [path("rescan/", self.admin_site.admin_view(self.rescan_view), name="training_basemodel_rescan")]
        return extra + super().get_urls()

    def rescan_view(self, request):
        """The "Rescan" button of the list page (an action would need rows selected)."""
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        self.rescan(request, self.get_queryset(request).none())
        return redirect("admin:training_basemodel_changelist")


# ================================================================================================ tasks

STATUS_COLOURS = {
    "validating": "#6c757d", "queued": "#6c757d", "running": "#0d6efd", "paused": "#fd7e14",
    "succeeded": "#198754", "failed": "#dc3545", "cancelled": "#495057",
}


def status_badge(status: str) -> str:
    colour = STATUS_COLOURS.get(status, "#6c757d")
    return format_html('<span class="job-status" data-status="{}" style="background:{};color:#fff;padding:2px 8px;'
                       'border-radius:10px;font-size:11px">{}</span>', status, colour, status)


def progress_bar(percent: float, label: str = "") -> str:
    return format_html(
        '<div class="job-progress" title="{}" style="width:140px;background:#e9ecef;border-radius:4px;height:14px;'
        'position:relative"><div style="width:{}%;background:#0d6efd;height:14px;border-radius:4px"></div>'
        '<span style="position:absolute;top:0;left:4px;font-size:10px;line-height:14px">{}</span></div>',
        label, f"{percent:.1f}", label or f"{percent:.0f}%")


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


class EventInline(admin.TabularInline):
    model = TrainingEvent
    extra = 0
    can_delete = False
    fields = ["created_at", "level", "type", "message"]
    readonly_fields = fields
    ordering = ["-id"]
    max_num = 0
    verbose_name_plural = "Latest events"

    def get_queryset(self, request):
        # The latest 50 only: a long run has thousands of metric lines (the API pages through them all).
        qs = super().get_queryset(request)
        ids = list(qs.order_by("-id").values_list("id", flat=True)[:50])
        return qs.filter(id__in=ids)


class CheckpointInline(admin.TabularInline):
    model = Checkpoint
    extra = 0
    can_delete = False
    fields = ["step", "metrics", "created_at", "path"]
    readonly_fields = fields
    max_num = 0


class StartTrainingForm(forms.Form):
    name = forms.CharField(max_length=180, required=False, help_text="Default: <base model>-<dataset>.")
    team = forms.ModelChoiceField(queryset=Team.objects.none())
    base_model = forms.ModelChoiceField(queryset=BaseModel.objects.none())
    train_version = forms.ModelChoiceField(queryset=None, label="Training data")
    validation_version = forms.ModelChoiceField(queryset=None, required=False, label="Validation data")
    params = forms.JSONField(required=False, initial=dict, widget=forms.Textarea(attrs={"rows": 6, "cols": 60}),
                             help_text='Hyperparameters as JSON, e.g. {"n_epochs": 3, "quantization": "nf4"}; '
                                       'anything left out is "auto".')
    priority = forms.IntegerField(initial=0, min_value=-100, max_value=100)

    def __init__(self, *args, user, **kwargs):
        super().__init__(*args, **kwargs)
        from datasets_app.models import DatasetVersion

        self.fields["team"].queryset = visibility.teams(user, write=True)
        self.fields["base_model"].queryset = visibility.visible_to(
            user, BaseModel.objects.filter(kind=BaseModel.Kind.CAUSAL_LM, available=True), include_global=True)
        versions = visibility.visible_to(user, DatasetVersion.objects.filter(status="ready"),
                                         team_field="dataset__team").select_related("dataset")
        self.fields["train_version"].queryset = versions
        self.fields["validation_version"].queryset = versions


@admin.register(TrainingTask)
class TrainingTaskAdmin(TeamScopedAdmin):
    list_display = ["name", "team", "status_col", "progress_col", "loss_col", "base_model", "device",
                    "duration_col", "created_at"]
    list_filter = ["status", "team", "base_model", "device"]
    search_fields = ["name", "base_model__name"]
    list_select_related = ["team", "base_model"]
    ordering = ["-created_at"]
    inlines = [CheckpointInline, EventInline]
    actions = ["cancel_tasks", "pause_tasks", "resume_tasks", "retry_tasks", "clone_tasks"]
    change_form_template = "admin/training/trainingtask/change_form.html"
    change_list_template = "admin/training/trainingtask/change_list.html"
    fieldsets = [
        (None, {"fields": ["name", "team", "status", "priority", "base_model", "train_version",
                           "validation_version", "adapter_link"]}),
        ("Parameters", {"fields": ["params", "resolved_params", "auto_explanation", "estimated_memory_bytes",
                                   "seed"]}),
        ("Progress", {"fields": ["step", "total_steps", "epoch", "tokens_seen", "tokens_per_second",
                                 "eta_seconds", "metrics", "trained_tokens"]}),
        ("Run", {"fields": ["device", "worker", "attempts", "recoveries", "heartbeat_at", "library_versions",
                            "log_path", "resume_from", "cancel_requested", "pause_requested"]}),
        ("Error", {"fields": ["error_code", "error_message", "error_param"]}),
        ("Times", {"fields": ["created_by", "created_at", "queued_at", "started_at", "paused_at", "finished_at"]}),
    ]

    def get_readonly_fields(self, request, obj=None):
        # Everything but the name and priority is written by services and the worker.
        editable = {"name", "priority"}
        names = [f for _title, opts in self.fieldsets for f in opts["fields"]]
        return [f for f in names if f not in editable]

    def has_add_permission(self, request):
        return False  # tasks are started through the "Start training" form (validation, memory check, queue)

    def has_delete_permission(self, request, obj=None):
        allowed = super().has_delete_permission(request, obj)
        return allowed and (obj is None or obj.is_terminal)

    @admin.display(description="Status", ordering="status")
    def status_col(self, obj: TrainingTask) -> str:
        return status_badge(obj.status)

    @admin.display(description="Progress")
    def progress_col(self, obj: TrainingTask) -> str:
        label = f"{obj.step}/{obj.total_steps}" if obj.total_steps else ""
        if obj.eta_seconds and obj.status == "running":
            label += f" · ETA {format_duration(obj.eta_seconds)}"
        return progress_bar(obj.progress_percent, label)

    @admin.display(description="Loss")
    def loss_col(self, obj: TrainingTask) -> str:
        loss = (obj.metrics or {}).get("train_loss")
        return f"{loss:.4f}" if isinstance(loss, (int, float)) else "—"

    @admin.display(description="Duration")
    def duration_col(self, obj: TrainingTask) -> str:
        return format_duration(obj.duration_seconds)

    @admin.display(description="Adapter")
    def adapter_link(self, obj: TrainingTask) -> str:
        adapter = obj.adapters.first()
        if adapter is None:
            return "—"
        url = reverse("admin:training_adapter_change", args=[adapter.pk])
        return format_html('<a href="{}">{}</a>', url, adapter.name)

    # ---- actions ------------------------------------------------------------------------------------

    def _bulk(self, request, queryset, service, verb: str) -> None:
        done = 0
        for task in queryset:
            if self.call_service(request, service, user=request.user, task=task) is not None:
                done += 1
        if done:
            self.message_user(request, f"{verb} {done} task(s).", level=messages.SUCCESS)

    @admin.action(description="Cancel selected tasks")
    def cancel_tasks(self, request, queryset):
        self._bulk(request, queryset, services.training_task_cancel, "Cancel requested for")

    @admin.action(description="Pause selected tasks (checkpoint, then stop)")
    def pause_tasks(self, request, queryset):
        self._bulk(request, queryset, services.training_task_pause, "Pause requested for")

    @admin.action(description="Resume selected paused tasks")
    def resume_tasks(self, request, queryset):
        self._bulk(request, queryset, services.training_task_resume, "Resumed")

    @admin.action(description="Retry selected failed/cancelled tasks")
    def retry_tasks(self, request, queryset):
        self._bulk(request, queryset, services.training_task_retry, "Queued again")

    @admin.action(description="Clone selected tasks (same inputs, new run)")
    def clone_tasks(self, request, queryset):
        self._bulk(request, queryset, services.training_task_clone, "Cloned")

    # ---- extra views --------------------------------------------------------------------------------

    def get_urls(self):
        wrap = self.admin_site.admin_view
        return [
            path("start/", wrap(self.start_view), name="training_trainingtask_start"),
            path("<int:pk>/progress.json", wrap(self.progress_view), name="training_trainingtask_progress"),
            path("<int:pk>/chart.png", wrap(self.chart_view), name="training_trainingtask_chart"),
            path("<int:pk>/log.txt", wrap(self.log_view), name="training_trainingtask_log"),
            path("<int:pk>/control/<str:action>/", wrap(self.control_view), name="training_trainingtask_control"),
        ] + super().get_urls()

    def _task(self, request, pk: int) -> TrainingTask:
        task = self.get_queryset(request).filter(pk=pk).first()
        if task is None:
            raise Http404("Training task not found.")
        return task

    def start_view(self, request):
        if not self.has_view_permission(request) or not visibility.teams(request.user, write=True).exists():
            raise PermissionDenied
        form = StartTrainingForm(request.POST or None, user=request.user,
                                 initial={"params": {}} if request.method == "GET" else None)
        if request.method == "POST" and form.is_valid():
            data = form.cleaned_data
            task = self.call_service(request, services.training_task_create, user=request.user, team=data["team"],
                                     name=data["name"], base_model=data["base_model"],
                                     train_version=data["train_version"],
                                     validation_version=data["validation_version"], params=data["params"] or {},
                                     priority=data["priority"])
            if task is not None:
                auto = "; ".join(f"{k}: {v}" for k, v in (task.auto_explanation or {}).items())
                self.message_user(request, f"Queued task {task.name}." + (f" Auto values — {auto}" if auto else ""),
                                  level=messages.SUCCESS)
                return redirect("admin:training_trainingtask_change", task.pk)
        context = {**self.admin_site.each_context(request), "title": "Start training", "form": form,
                   "opts": self.model._meta}
        return TemplateResponse(request, "admin/training/trainingtask/start.html", context)

    def progress_view(self, request, pk: int):
        task = self._task(request, pk)
        events = list(task.events.order_by("-id").values("id", "created_at", "level", "type", "message")[:20])
        return JsonResponse({
            "status": task.status, "step": task.step, "total_steps": task.total_steps,
            "percent": task.progress_percent, "epoch": task.epoch, "eta_seconds": task.eta_seconds,
            "tokens_per_second": task.tokens_per_second, "tokens_seen": task.tokens_seen, "metrics": task.metrics,
            "error": task.error_message, "events": events,
        })

    def chart_view(self, request, pk: int):
        from training.charts import loss_chart_png

        task = self._task(request, pk)
        rows = task.events.filter(type="metrics").order_by("id").values_list("data", flat=True)
        return HttpResponse(loss_chart_png(list(rows), title=task.name), content_type="image/png")

    def log_view(self, request, pk: int):
        from pathlib import Path

        task = self._task(request, pk)
        path = Path(task.log_path) if task.log_path else None
        if not path or not path.is_file():
            raise Http404("No log yet.")
        # The last 256 KiB: logs of long runs are large, the end is what one wants.
        size = path.stat().st_size
        with path.open("rb") as fh:
            fh.seek(max(0, size - 256 * 1024))
            data = fh.read()
        return HttpResponse(data, content_type="text/plain; charset=utf-8")

    def control_view(self, request, pk: int, action: str):
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        task = self._task(request, pk)
        service = {"cancel": services.training_task_cancel, "pause": services.training_task_pause,
                   "resume": services.training_task_resume, "retry": services.training_task_retry,
                   "clone": services.training_task_clone}.get(action)
        if service is None:
            raise Http404("Unknown action.")
        result = self.call_service(request, service, user=request.user, task=task,
                                   success=f"{action.capitalize()}: done for {task.name}.")
        if action == "clone" and result is not None:
            return redirect("admin:training_trainingtask_change", result.pk)
        return redirect("admin:training_trainingtask_change", task.pk)


@admin.register(Adapter)
class AdapterAdmin(TeamScopedAdmin):
    list_display = ["name", "team", "kind", "base_model", "task_link", "params_col", "size_col", "status",
                    "created_at"]
    list_filter = ["kind", "status", "team", "base_model"]
    search_fields = ["name", "base_model__name", "task__name"]
    list_select_related = ["team", "base_model", "task"]
    readonly_fields = ["team", "kind", "base_model", "task", "path", "lora_config", "trainable_parameters",
                       "size_bytes", "metrics", "label_map", "created_by", "created_at", "download"]
    fields = ["name", "status", *readonly_fields]
    actions = ["archive"]

    def has_add_permission(self, request):
        return False

    @admin.display(description="Task")
    def task_link(self, obj: Adapter) -> str:
        if not obj.task_id:
            return "—"
        return format_html('<a href="{}">{}</a>', reverse("admin:training_trainingtask_change", args=[obj.task_id]),
                           obj.task.name)

    @admin.display(description="Trainable params", ordering="trainable_parameters")
    def params_col(self, obj: Adapter) -> str:
        return format_count(obj.trainable_parameters)

    @admin.display(description="Size", ordering="size_bytes")
    def size_col(self, obj: Adapter) -> str:
        return format_bytes(obj.size_bytes)

    @admin.display(description="Download")
    def download(self, obj: Adapter) -> str:
        return format_html('<a href="{}">{}.zip</a>', reverse("admin:training_adapter_download", args=[obj.pk]),
                           obj.name)

    @admin.action(description="Archive selected adapters")
    def archive(self, request, queryset):
        for adapter in queryset:
            self.call_service(request, services.adapter_archive, user=request.user, adapter=adapter)

    def get_urls(self):
        return [path("<int:pk>/download/", self.admin_site.admin_view(self.download_view),
                     name="training_adapter_download")] + super().get_urls()

    def download_view(self, request, pk: int):
        adapter = self.get_queryset(request).filter(pk=pk).first()
        if adapter is None:
            raise Http404("Adapter not found.")
        response = StreamingHttpResponse(services.adapter_zip_stream(adapter), content_type="application/zip")
        response["Content-Disposition"] = f'attachment; filename="{adapter.name}.zip"'
        return response
