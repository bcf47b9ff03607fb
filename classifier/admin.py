from __future__ import annotations

import io

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpResponse, JsonResponse
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join
from django.views.decorators.http import require_POST

from accounts import visibility
from accounts.admin_base import TeamScopedAdmin, VisibleTeamFilter
from accounts.models import Team
from catalog.models import BaseModel
from classifier import services
from classifier.models import ClassifierTask
from core import admin_ui
from core.admin_ui import format_duration, status_badge
from core.commands import format_count
from core.errors import ApplicationError
from datasets_app.models import DatasetVersion
from jobs.admin import JobControlAdminMixin, parameter_table, value_table


class StartClassifierForm(forms.Form):
    name = forms.CharField(max_length=180, required=False, help_text="Default: <base model>-<dataset>. "
                                                                     "The adapter is named after the task.")
    team = forms.ModelChoiceField(queryset=Team.objects.none())
    base_model = forms.ModelChoiceField(queryset=BaseModel.objects.none(), label="Encoder")
    train_version = forms.ModelChoiceField(queryset=None, label="Training data")
    validation_version = forms.ModelChoiceField(queryset=None, required=False, label="Validation data",
                                                help_text="Empty: a stratified split of the training data.")
    params = forms.JSONField(required=False, initial=dict, widget=forms.Textarea(attrs={"rows": 6, "cols": 60}),
                             help_text='Hyperparameters as JSON, e.g. {"n_epochs": 5, "learning_rate": 0.003}.')
    priority = forms.IntegerField(initial=0, min_value=-100, max_value=100)

    def __init__(self, *args, user, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["team"].queryset = visibility.teams(user, write=True)
        self.fields["base_model"].queryset = visibility.visible_to(
            user, BaseModel.objects.filter(kind=BaseModel.Kind.ENCODER, available=True), include_global=True)
        versions = visibility.visible_to(user, DatasetVersion.objects.filter(status="ready", format="classification"),
                                         team_field="dataset__team").select_related("dataset")
        self.fields["train_version"].queryset = versions
        self.fields["validation_version"].queryset = versions


def _score(value) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) else "—"


def confusion_png(report: dict, title: str = "") -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = report.get("labels") or []
    matrix = report.get("confusion_matrix") or []
    size = max(3.0, 0.9 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    try:
        ax.imshow(matrix or [[0]], cmap="Blues")
        ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
        ax.set_yticks(range(len(labels)), labels)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        peak = max((max(r) for r in matrix), default=0)
        for i, row in enumerate(matrix):
            for j, n in enumerate(row):
                ax.text(j, i, str(n), ha="center", va="center", color="white" if n > peak / 2 else "black")
        ax.set_title(title or "Confusion matrix")
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=90)
        return buf.getvalue()
    finally:
        plt.close(fig)


@admin.register(ClassifierTask)
class ClassifierTaskAdmin(JobControlAdminMixin, TeamScopedAdmin):
    list_display = ["name", "team", "status_col", "progress_col", "accuracy_col", "macro_f1_col", "base_model",
                    "duration_col", "created_at"]
    list_filter = ["status", VisibleTeamFilter, ("base_model", admin_ui.VisibleRelatedFilter)]
    search_fields = ["name", "base_model__name", "team__name", "train_version__dataset__name"]
    list_select_related = ["team", "base_model", "adapter"]
    ordering = ["-created_at"]
    actions = ["cancel_tasks", "pause_tasks", "resume_tasks", "retry_tasks"]
    change_form_template = "admin/classifier/classifiertask/change_form.html"
    change_list_template = "admin/classifier/classifiertask/change_list.html"
    # As a training task's page: the header (status, progress, the confusion matrix, accuracy and macro-F1, the
    # valid controls), then the per-class scores, the parameters and why, the data and model; the run collapsed.
    fieldsets = [
        ("Results (best epoch)", {"fields": ["per_class_table", "params_col"]}),
        ("Parameters", {"fields": ["parameters"]}),
        ("Data and model", {"fields": ["name", "priority", "team", "base_model", "train_version",
                                       "validation_version", "adapter_link", "labels"]}),
        ("Run details", {"classes": ["collapse"],
                         "fields": ["status", "step", "total_steps", "epoch", "tokens_seen", "tokens_per_second",
                                    "eta_seconds", "metrics_table", "device", "worker", "attempts", "recoveries",
                                    "heartbeat_at", "library_versions", "log_path", "resume_from",
                                    "cancel_requested", "pause_requested", "error_code", "error_message",
                                    "error_param", "created_by", "created_at", "queued_at", "started_at", "paused_at",
                                    "finished_at"]}),
    ]

    def headline(self, job: ClassifierTask) -> list[tuple[str, str]]:
        rows = [(label, _score(value)) for label, value in (("Macro-F1", job.macro_f1), ("Accuracy", job.accuracy))
                if value is not None]
        best = (job.report or {}).get("best_epoch")
        if best is not None:
            rows.append(("Best epoch", str(best)))
        return rows + super().headline(job)

    @admin.display(description="Parameters")
    def parameters(self, obj: ClassifierTask) -> str:
        return parameter_table(obj.resolved_params or {}, obj.params or {}, (obj.report or {}).get("auto") or {},
                               raw={"given": obj.params, "resolved": obj.resolved_params})

    @admin.display(description="Labels")
    def labels(self, obj: ClassifierTask) -> str:
        return ", ".join(str(v) for _k, v in sorted((obj.label_map or {}).items(), key=lambda kv: int(kv[0])
                                                    if str(kv[0]).isdigit() else 0)) or "—"

    @admin.display(description="Metrics")
    def metrics_table(self, obj: ClassifierTask) -> str:
        return value_table(obj.metrics or {})

    def has_add_permission(self, request):
        return False  # started through the "Start classifier training" form (validation, queue)

    def has_delete_permission(self, request, obj=None):
        allowed = super().has_delete_permission(request, obj)
        return allowed and (obj is None or obj.is_terminal)

    @admin.display(description="Status", ordering="status")
    def status_col(self, obj: ClassifierTask) -> str:
        return status_badge(obj.status)

    @admin.display(description="Progress")
    def progress_col(self, obj: ClassifierTask) -> str:
        return admin_ui.job_progress(obj)

    @admin.display(description="Accuracy")
    def accuracy_col(self, obj: ClassifierTask) -> str:
        return _score(obj.accuracy)

    @admin.display(description="Macro-F1")
    def macro_f1_col(self, obj: ClassifierTask) -> str:
        return _score(obj.macro_f1)

    @admin.display(description="Duration")
    def duration_col(self, obj: ClassifierTask) -> str:
        return format_duration(obj.duration_seconds)

    @admin.display(description="Trainable parameters")
    def params_col(self, obj: ClassifierTask) -> str:
        if not obj.total_parameters:
            return "—"
        share = 100 * obj.trainable_parameters / obj.total_parameters
        return (f"{format_count(obj.trainable_parameters)} of {format_count(obj.total_parameters)} "
                f"({share:.2f}%, LoRA + head)")

    @admin.display(description="Adapter")
    def adapter_link(self, obj: ClassifierTask) -> str:
        if not obj.adapter_id:
            return "—"
        return format_html('<a href="{}">{}</a>', reverse("admin:training_adapter_change", args=[obj.adapter_id]),
                           obj.adapter.name)

    @admin.display(description="Per class (best epoch)")
    def per_class_table(self, obj: ClassifierTask) -> str:
        rows = (obj.report or {}).get("per_class") or {}
        if not rows:
            return "—"
        body = format_html_join("", "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                                ((label, _score(r["precision"]), _score(r["recall"]), _score(r["f1"]), r["support"])
                                 for label, r in rows.items()))
        return format_html('<table class="per-class"><thead><tr><th>label</th><th>precision</th><th>recall</th>'
                           '<th>F1</th><th>support</th></tr></thead><tbody>{}</tbody></table>', body)

    # ---- extra views --------------------------------------------------------------------------------

    def get_urls(self):
        wrap = self.admin_site.admin_view
        return [
            path("start/", wrap(self.start_view), name="classifier_classifiertask_start"),
            path("<int:pk>/confusion.png", wrap(self.confusion_view), name="classifier_classifiertask_confusion"),
            # The "try it" box of a classifier adapter's page (training's adapter admin shows it when this exists).
            path("adapter/<int:pk>/classify/", wrap(require_POST(self.classify_view)), name="classifier_try_adapter"),
            *self.job_urls(),
        ] + super().get_urls()

    def classify_view(self, request, pk: int):
        """One text of the "try it" box through ``classifier_predict`` (visibility included)."""
        try:
            pred = services.classifier_predict(user=request.user, adapter=pk, texts=[request.POST.get("text", "")])[0]
        except ApplicationError as exc:
            return JsonResponse({"detail": exc.message, "code": exc.code, "param": exc.param}, status=exc.status)
        return JsonResponse(pred)

    def start_view(self, request):
        if not self.has_view_permission(request) or not visibility.teams(request.user, write=True).exists():
            raise PermissionDenied
        form = StartClassifierForm(request.POST or None, user=request.user,
                                   initial={"params": {}} if request.method == "GET" else None)
        if request.method == "POST" and form.is_valid():
            data = form.cleaned_data
            task = self.call_service(request, services.classifier_task_create, user=request.user, team=data["team"],
                                     name=data["name"], base_model=data["base_model"],
                                     train_version=data["train_version"],
                                     validation_version=data["validation_version"], params=data["params"] or {},
                                     priority=data["priority"])
            if task is not None:
                self.message_user(request, f"Queued classifier task {task.name}.", level=messages.SUCCESS)
                return redirect("admin:classifier_classifiertask_change", task.pk)
        context = {**self.admin_site.each_context(request), "title": "Start classifier training", "form": form,
                   "opts": self.model._meta}
        return TemplateResponse(request, "admin/classifier/classifiertask/start.html", context)

    def confusion_view(self, request, pk: int):
        task = self._task(request, pk)
        report = task.report or {}
        if not report.get("confusion_matrix"):
            last = task.events.filter(type="message", data__report__isnull=False).order_by("-id").first()
            report = (last.data or {}).get("report", {}) if last else {}
        if not report.get("confusion_matrix"):
            raise Http404("No metrics yet.")
        return HttpResponse(confusion_png(report, title=task.name), content_type="image/png")
