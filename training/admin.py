from __future__ import annotations

import json
import re

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpResponse, HttpResponseNotAllowed, JsonResponse, StreamingHttpResponse
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join

from accounts import visibility
from accounts.admin_base import TeamScopedAdmin, VisibleTeamFilter
from accounts.models import Team
from catalog.models import BaseModel
from catalog.services import base_model_get
from core import admin_ui
from core.commands import format_bytes, format_count
from core.errors import ApplicationError
from datasets_app.models import DatasetVersion
from datasets_app.services import dataset_version_get, version_preview
from jobs.admin import JobControlAdminMixin, JobEventInline, metrics_text, parameter_table, value_table
from ml.hparams import AUTO, LR_SCHEDULERS, QUANTIZATIONS, TEMPLATES, MemoryEstimate, TrainingParams
from training import lifecycle, recipes, services
from training.charts import loss_chart_png
from training.models import Adapter, MergeEvent, MergeJob, TrainingTask

# ================================================================================================ tasks



# The hyperparameters the start form has a field for (label, choices or None for a text box); the raw JSON box
# takes every other one. Each field's default is the params model's: "auto" where the model allows it.
PARAM_FIELDS: dict[str, tuple[str, tuple[str, ...] | None]] = {
    "n_epochs": ("Epochs", None),
    "learning_rate": ("Learning rate", None),
    "batch_size": ("Batch size", None),
    "gradient_accumulation_steps": ("Gradient accumulation", None),
    "max_seq_length": ("Max sequence length", None),
    "lora_r": ("LoRA r", None),
    "lora_alpha": ("LoRA alpha", None),
    "lora_dropout": ("LoRA dropout", None),
    "target_modules": ("Target modules", None),
    "quantization": ("Quantization", ("auto", *QUANTIZATIONS)),
    "packing": ("Packing", ("auto", "true", "false")),
    "loss_on": ("Loss on", ("assistant", "all")),
    "template": ("Template", ("auto", *TEMPLATES)),
    "warmup_ratio": ("Warmup ratio", None),
    "lr_scheduler": ("Scheduler", ("auto", *LR_SCHEDULERS)),
    "seed": ("Seed", None),
}
PARAM_HELP = {"target_modules": 'all-linear, or module names separated by commas (q_proj, v_proj)',
              "loss_on": "assistant: the answers only; all: every token"}


def _param_default(name: str) -> str:
    default = TrainingParams.model_fields[name].default
    return str(default).lower() if isinstance(default, bool) else str(default)


def _param_value(name: str, text: str):
    """A field's text as the params model reads it; None when it says what the model would do anyway."""
    text = (text or "").strip()
    if text in ("", AUTO) or text == _param_default(name):
        return None
    if name == "target_modules":
        return text if text == "all-linear" else [m for m in re.split(r"[\s,]+", text) if m]
    if name == "packing":
        return text == "true"
    if PARAM_FIELDS[name][1] is not None:
        return text
    for number in (int, float):
        try:
            return number(text)
        except ValueError:
            pass
    return text  # the params model names the field and says what it expects


class StartTrainingForm(forms.Form):
    name = forms.CharField(max_length=180, required=False, help_text="Default: <base model>-<dataset>.")
    team = forms.ModelChoiceField(queryset=Team.objects.none())
    base_model = forms.ModelChoiceField(queryset=BaseModel.objects.none(), required=False,
                                        help_text="Required unless the recipe names it.")
    train_version = forms.ModelChoiceField(queryset=None, label="Training data", required=False,
                                           help_text="Required unless the recipe names it.")
    validation_version = forms.ModelChoiceField(queryset=None, required=False, label="Validation data")
    method = forms.ChoiceField(choices=TrainingTask.Method.choices, initial=TrainingTask.Method.SFT, required=False,
                               help_text="sft trains on chat/text data; dpo and orpo on preference pairs; kto on "
                                         "labelled answers.")
    start_adapter = forms.ModelChoiceField(queryset=Adapter.objects.none(), required=False,
                                           help_text="Train this adapter further (e.g. DPO on an SFT adapter of "
                                                     "the same base model).")
    params = forms.JSONField(required=False, initial=dict, label="Raw JSON",
                             widget=forms.Textarea(attrs={"rows": 4, "cols": 60}),
                             help_text='Any other hyperparameter, e.g. {"max_steps": 200, "beta": 0.1}; a key that '
                                       "has its own field above belongs in that field.")
    priority = forms.IntegerField(initial=0, min_value=-100, max_value=100)
    config = forms.FileField(required=False, label="Recipe (YAML)",
                             help_text="Our keys or LLaMA-Factory's (model_name_or_path, dataset, lora_rank, ...); "
                                       "the fields above, where filled in, override it.")
    evaluate = forms.BooleanField(required=False, label="Evaluate on success",
                                  help_text="Queue an evaluation run (perplexity, samples, style, overlap against "
                                            "the base model) when the adapter is ready.")

    def __init__(self, *args, user, **kwargs):
        super().__init__(*args, **kwargs)
        teams = visibility.teams(user, write=True)
        self.fields["team"].queryset = teams
        if len(teams[:2]) == 1:
            self.fields["team"].initial = teams[0].pk
        self.fields["base_model"].queryset = visibility.visible_to(
            user, BaseModel.objects.filter(kind=BaseModel.Kind.CAUSAL_LM, available=True), include_global=True)
        versions = visibility.visible_to(user, DatasetVersion.objects.filter(status="ready"),
                                         team_field="dataset__team").select_related("dataset")
        self.fields["train_version"].queryset = versions
        self.fields["validation_version"].queryset = versions
        self.fields["start_adapter"].queryset = visibility.visible_to(
            user, Adapter.objects.filter(kind=Adapter.Kind.CAUSAL_LM, status=Adapter.Status.READY,
                                         files_deleted_at__isnull=True)).select_related("base_model")
        for name, (label, choices) in PARAM_FIELDS.items():
            attrs = {"data-param": name, "data-default": _param_default(name)}
            if choices is None:
                field = forms.CharField(label=label, required=False, initial=_param_default(name),
                                        widget=forms.TextInput(attrs={**attrs, "size": 14}))
            else:
                field = forms.ChoiceField(label=label, required=False, initial=_param_default(name),
                                          choices=[(c, c) for c in choices], widget=forms.Select(attrs=attrs))
            field.help_text = PARAM_HELP.get(name, "")
            self.fields[name] = field

    def other_rows(self):
        return [self[name] for name in self.fields if name not in PARAM_FIELDS and name != "params"]

    def clean(self):
        data = super().clean()
        raw = data.get("params")
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            self.add_error("params", "Give a JSON object, e.g. {\"max_steps\": 200}.")
            raw = {}
        # One set of parameters is posted: the fields' values and the raw JSON's other keys. A key set in both
        # (only without JavaScript, which moves such keys into their field) is refused rather than picked.
        merged = dict(raw)
        for name in PARAM_FIELDS:
            value = _param_value(name, data.get(name, ""))
            if value is None:
                continue
            if name in raw and raw[name] != value:
                self.add_error(name, f"Also set in the raw JSON ({raw[name]!r}): keep one of the two.")
            merged[name] = value
        data["params"] = merged
        return data

    def require_inputs(self) -> bool:
        """Queueing needs a base model and training data, from the fields or the recipe (the plan does not)."""
        if not self.cleaned_data.get("config"):
            for name in ("base_model", "train_version"):
                if not self.cleaned_data.get(name) and name not in self.errors:
                    self.add_error(name, "Required unless a recipe is uploaded.")
        return not self.errors

    def refused(self, exc: ApplicationError) -> bool:
        """Show a service's refusal on the field it names (each field of a parameter error); False when it names
        none (the team's quota, a recipe's problems, which name its keys and lines): the caller shows the message."""
        if isinstance(exc, recipes.RecipeError):
            return False
        def field_of(param):
            # A hyperparameter without a field of its own (or the parameters as a whole) is the raw JSON's.
            if param in self.fields:
                return param
            return "params" if exc.code == "invalid_parameter" and param else None

        details = exc.details if isinstance(exc.details, list) else []
        named = [{"param": field_of(d.get("param")), "message": d.get("message") or exc.message} for d in details
                 if isinstance(d, dict) and field_of(d.get("param"))]
        if field_of(exc.param) and field_of(exc.param) not in (d["param"] for d in named):
            named.insert(0, {"param": field_of(exc.param), "message": exc.message})
        if any(d["param"] == "params" for d in named):
            named = [d for d in named if d["param"] != "params"] + [{"param": "params", "message": exc.message}]
        for detail in named:
            self.add_error(detail["param"], detail["message"])
        return bool(named)


def memory_estimate_text(task: TrainingTask) -> str:
    """The estimate the task was admitted with and the batch it describes (the one the run checks again)."""
    if task.memory_estimate:
        return MemoryEstimate.from_dict(task.memory_estimate).describe()
    return format_bytes(task.estimated_memory_bytes) if task.estimated_memory_bytes else "—"


@admin.register(TrainingTask)
class TrainingTaskAdmin(JobControlAdminMixin, TeamScopedAdmin):
    list_display = ["name", "team", "status_col", "progress_col", "loss_col", "base_model", "device",
                    "duration_col", "created_at"]
    list_filter = ["status", "method", VisibleTeamFilter, ("base_model", admin_ui.VisibleRelatedFilter), "device"]
    search_fields = ["name", "base_model__name", "team__name", "train_version__dataset__name"]
    list_select_related = ["team", "base_model"]
    ordering = ["-created_at"]
    actions = ["cancel_tasks", "pause_tasks", "resume_tasks", "retry_tasks", "clone_tasks"]
    clone_service = services.training_task_clone
    change_form_template = "admin/training/trainingtask/change_form.html"
    change_list_template = "admin/training/trainingtask/change_list.html"
    # The page reads from the top: the header (jobs/change_form.html: status, progress, ETA, chart, headline
    # figures, the valid controls, tracking), the parameters and why, the data and model, the checkpoints; the run's
    # details and its events collapsed at the bottom.
    fieldsets = [
        ("Parameters", {"fields": ["parameters", "estimated_memory"]}),
        ("Data and model", {"fields": ["name", "priority", "team", "method", "base_model", "start_adapter",
                                       "train_version", "validation_version", "adapter_link", "evaluate_on_success",
                                       "evaluation_metrics"]}),
        ("Checkpoints", {"fields": ["checkpoint_table"]}),
        ("Run details", {"classes": ["collapse"],
                         "fields": ["status", "step", "total_steps", "epoch", "tokens_seen", "tokens_per_second",
                                    "trained_tokens", "metrics_table", "device", "worker", "attempts", "recoveries",
                                    "heartbeat_at", "library_versions", "log_path", "resume_from",
                                    "cancel_requested", "pause_requested", "error_code", "error_message",
                                    "error_param", "created_by", "created_at", "queued_at", "started_at", "paused_at",
                                    "finished_at", "duration_col"]}),
    ]

    def change_view(self, request, object_id, form_url="", extra_context=None):
        task = self.get_queryset(request).filter(pk=object_id).first() if str(object_id).isdigit() else None
        extra = dict(extra_context or {})
        if task is not None:
            extra["tracking"] = services.training_task_tracking(task=task)
        return super().change_view(request, object_id, form_url, extra)

    @admin.display(description="Checkpoints")
    def checkpoint_table(self, obj: TrainingTask) -> str:
        rows = list(obj.checkpoints.order_by("-step")[:20])
        if not rows:
            return "None yet: checkpoints are written every save_steps steps and when the task is paused."
        body = format_html_join("", "<tr><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td></tr>", (
            (c.step, metrics_text(c.metrics), f"{c.created_at:%Y-%m-%d %H:%M:%S}", c.path) for c in rows))
        return format_html('<table id="checkpoints"><thead><tr><th>step</th><th>metrics</th><th>written</th>'
                           '<th>folder</th></tr></thead><tbody>{}</tbody></table>', body)

    @admin.display(description="Metrics")
    def metrics_table(self, obj: TrainingTask) -> str:
        return value_table(obj.metrics or {})

    @admin.display(description="Parameters")
    def parameters(self, obj: TrainingTask) -> str:
        return parameter_table(obj.resolved_params or {}, obj.params or {}, obj.auto_explanation or {},
                               raw={"given": obj.params, "resolved": obj.resolved_params})

    def headline(self, job: TrainingTask) -> list[tuple[str, str]]:
        metrics = job.metrics or {}
        rows = [(label, f"{metrics[key]:.4f}") for key, label in (("train_loss", "Training loss"),
                                                                   ("valid_loss", "Validation loss"))
                if isinstance(metrics.get(key), (int, float))]
        if job.tokens_per_second:
            rows.append(("Speed", f"{job.tokens_per_second:,.0f} tokens/s"))
        if job.trained_tokens:
            rows.append(("Trained tokens", format_count(job.trained_tokens)))
        if job.estimated_memory_bytes:
            rows.append(("Estimated memory", memory_estimate_text(job)))
        return rows + super().headline(job)

    def has_add_permission(self, request):
        return False  # tasks are started through the "Start training" form (validation, memory check, queue)

    def has_delete_permission(self, request, obj=None):
        allowed = super().has_delete_permission(request, obj)
        return allowed and (obj is None or obj.is_terminal)

    @admin.display(description="Status", ordering="status")
    def status_col(self, obj: TrainingTask) -> str:
        return admin_ui.status_badge(obj.status)

    @admin.display(description="Progress")
    def progress_col(self, obj: TrainingTask) -> str:
        return admin_ui.job_progress(obj)

    @admin.display(description="Loss")
    def loss_col(self, obj: TrainingTask) -> str:
        loss = (obj.metrics or {}).get("train_loss")
        return f"{loss:.4f}" if isinstance(loss, (int, float)) else "—"

    @admin.display(description="Duration")
    def duration_col(self, obj: TrainingTask) -> str:
        return admin_ui.format_duration(obj.duration_seconds)

    @admin.display(description="Estimated memory")
    def estimated_memory(self, obj: TrainingTask) -> str:
        text = memory_estimate_text(obj)
        available = (obj.memory_estimate or {}).get("available_bytes")
        return f"{text}; checked against {format_bytes(available)} available" if available else text

    @admin.display(description="ETA")
    def eta(self, obj: TrainingTask) -> str:
        return admin_ui.format_duration(obj.eta_seconds) if obj.eta_seconds and obj.status == "running" else "—"

    @admin.display(description="Adapter")
    def adapter_link(self, obj: TrainingTask) -> str:
        adapter = obj.adapters.first()
        if adapter is None:
            return "—"
        url = reverse("admin:training_adapter_change", args=[adapter.pk])
        return format_html('<a href="{}">{}</a>', url, adapter.name)

    # ---- extra views --------------------------------------------------------------------------------

    def get_urls(self):
        wrap = self.admin_site.admin_view
        return [
            path("start/", wrap(self.start_view), name="training_trainingtask_start"),
            path("start/plan.json", wrap(self.plan_view), name="training_trainingtask_plan"),
            path("start/preview.json", wrap(self.preview_view), name="training_trainingtask_preview"),
            path("<int:pk>/chart.png", wrap(self.chart_view), name="training_trainingtask_chart"),
            path("<int:pk>/log.txt", wrap(self.log_view), name="training_trainingtask_log"),
            path("<int:pk>/recipe.yaml", wrap(self.recipe_view), name="training_trainingtask_recipe"),
            *self.job_urls(),
        ] + super().get_urls()

    def _start_allowed(self, request) -> None:
        if not self.has_view_permission(request) or not visibility.teams(request.user, write=True).exists():
            raise PermissionDenied

    def _plan(self, request, form: StartTrainingForm) -> dict:
        """The plan of the form's inputs (``training_task_plan``), or the reason there is none, as JSON-ready data."""
        if not form.is_valid():
            return {"errors": {k: [str(m) for m in v] for k, v in form.errors.items()}}
        data = form.cleaned_data
        if not data["base_model"] or not data["train_version"]:
            return {"incomplete": "Choose a base model and the training data: the values auto picks depend on them."}
        try:
            plan = services.training_task_plan(user=request.user, team=data["team"], base_model=data["base_model"],
                                               train_version=data["train_version"],
                                               validation_version=data["validation_version"],
                                               params=data["params"], method=data["method"] or "sft",
                                               start_adapter=data["start_adapter"])
        except ApplicationError as exc:
            form.refused(exc)
            return {"detail": exc.message, "code": exc.code, "param": exc.param,
                    "errors": {k: [str(m) for m in v] for k, v in form.errors.items()}}
        return plan.to_dict()

    def _preview(self, request, data) -> dict:
        """The first example of the training data rendered as training renders it (the form's template and
        loss_on), its trained tokens marked."""
        base_model, train_version = data.get("base_model"), data.get("train_version")
        if not base_model or not train_version:
            return {}
        try:
            version = dataset_version_get(user=request.user, ref=train_version, require_ready=True)
            model = base_model_get(user=request.user, ref=base_model, kind=BaseModel.Kind.CAUSAL_LM)
            return version_preview(version=version, base_model=model, n=1, template=data.get("template") or "auto",
                                   loss_on=data.get("loss_on") or "assistant")
        except ApplicationError as exc:
            return {"detail": exc.message, "code": exc.code, "param": exc.param}

    def start_view(self, request):
        self._start_allowed(request)
        form = StartTrainingForm(request.POST or None, request.FILES or None, user=request.user)
        plan = preview = None
        if request.method == "POST" and "_plan" in request.POST:
            # Without JavaScript: "Show the plan" posts the form and shows what auto picks, queueing nothing.
            plan = self._plan(request, form)
            preview = self._preview(request, request.POST)
        elif request.method == "POST" and form.is_valid() and form.require_inputs():
            data = form.cleaned_data
            try:
                if data["config"]:
                    task = recipes.training_recipe_task_create(
                        user=request.user, config=data["config"].read(), team=data["team"], name=data["name"],
                        base_model=data["base_model"], train_version=data["train_version"],
                        validation_version=data["validation_version"], params=data["params"],
                        priority=data["priority"] or None, evaluate=data["evaluate"] or None)
                else:
                    task = services.training_task_create(
                        user=request.user, team=data["team"], name=data["name"], base_model=data["base_model"],
                        train_version=data["train_version"], validation_version=data["validation_version"],
                        params=data["params"], priority=data["priority"], evaluate=data["evaluate"],
                        method=data["method"] or TrainingTask.Method.SFT, start_adapter=data["start_adapter"])
            except ApplicationError as exc:
                if not form.refused(exc):
                    self.message_user(request, exc.message, level=messages.ERROR)
            else:
                auto = "; ".join(f"{k}: {v}" for k, v in (task.auto_explanation or {}).items())
                self.message_user(request, f"Queued task {task.name}." + (f" Auto values — {auto}" if auto else ""),
                                  level=messages.SUCCESS)
                return redirect("admin:training_trainingtask_change", task.pk)
        context = {**self.admin_site.each_context(request), "title": "Start training", "form": form,
                   "opts": self.model._meta, "plan": plan, "preview": preview,
                   "param_rows": [(form[name], ((plan or {}).get("fields") or {}).get(name)) for name in PARAM_FIELDS],
                   "plan_params": json.dumps(plan["params"], ensure_ascii=False) if plan and "params" in plan else ""}
        return TemplateResponse(request, "admin/training/trainingtask/start.html", context)

    def plan_view(self, request):
        """The start form's live plan: POST the form as it stands, get what auto picks and the memory verdict."""
        self._start_allowed(request)
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        plan = self._plan(request, StartTrainingForm(request.POST, user=request.user))
        return JsonResponse(plan, status=400 if "errors" in plan else 200)

    def preview_view(self, request):
        self._start_allowed(request)
        preview = self._preview(request, request.GET)
        return JsonResponse(preview, status=400 if "detail" in preview else 200)

    def chart_view(self, request, pk: int):
        task = self._task(request, pk)
        rows = task.events.filter(type="metrics").order_by("id").values_list("data", flat=True)
        return HttpResponse(loss_chart_png(list(rows), title=task.name), content_type="image/png")

    def recipe_view(self, request, pk: int):
        task = self._task(request, pk)
        response = HttpResponse(recipes.training_recipe_export(user=request.user, task=task),
                                content_type="application/yaml; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="{task.name}.yaml"'
        return response

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



STAGE_ACTIONS = {
    # action name: (service, keyword arguments, message)
    "candidate": ("adapter_promote", {"stage": "candidate"}, "Stage: candidate."),
    "draft": ("adapter_promote", {"stage": "draft"}, "Stage: draft."),
    "production": ("adapter_promote", {"stage": "production"}, "Production requested or applied."),
    "approve": ("adapter_approve", {}, "Approved for production."),
    "archive": ("adapter_archive", {}, "Archived."),
    "restore": ("adapter_restore", {}, "Restored."),
    "delete": ("adapter_delete", {}, "Files deleted; the adapter stays listed, archived."),
}


@admin.register(Adapter)
class AdapterAdmin(TeamScopedAdmin):
    list_display = ["name", "model_name", "team", "kind", "stage_col", "status_col", "base_model", "task_link",
                    "params_col", "size_col", "created_at"]
    list_filter = ["stage", "status", "kind", "source", VisibleTeamFilter,
                   ("base_model", admin_ui.VisibleRelatedFilter)]
    search_fields = ["name", "model_name", "base_model__name", "task__name", "team__name"]
    list_select_related = ["team", "base_model", "task"]
    readonly_fields = ["team", "kind", "stage_col", "serving", "approval", "base_model", "task", "source", "path",
                       "lora_config", "trainable_parameters", "size_bytes", "metrics", "label_map", "created_by",
                       "created_at", "files_deleted_at", "download"]
    fields = ["name", "model_name", *readonly_fields]
    actions = ["archive", "promote_candidate", "reproduce"]
    change_form_template = "admin/training/adapter/change_form.html"

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        # Deleting keeps the row (lineage, audit trail): it is the "Delete files" button, not Django's delete.
        return False

    def save_model(self, request, obj, form, change):
        # Never obj.save(): lifecycle services write the other columns (stage, status, production slot);
        # names change through adapter_rename (an AdapterEvent, the production constraint as a 409).
        changed = {f: form.cleaned_data[f] for f in ("name", "model_name") if f in form.changed_data}
        if change and changed:
            renamed = self.call_service(request, lifecycle.adapter_rename, user=request.user,
                                        adapter=Adapter.objects.get(pk=obj.pk), **changed)
            if renamed is None:
                request._service_refused = True

    def response_change(self, request, obj):
        if getattr(request, "_service_refused", False):
            return redirect(request.path)  # the error message is shown; nothing changed
        return super().response_change(request, obj)

    @admin.display(description="Task")
    def task_link(self, obj: Adapter) -> str:
        task = lifecycle.origin_task(obj)
        if task is None:
            return "—"
        return format_html('<a href="{}">{}</a>', _task_url(task), task.name)

    @admin.display(description="Trainable params", ordering="trainable_parameters")
    def params_col(self, obj: Adapter) -> str:
        return format_count(obj.trainable_parameters)

    @admin.display(description="Size", ordering="size_bytes")
    def size_col(self, obj: Adapter) -> str:
        return format_bytes(obj.size_bytes)

    @admin.display(description="Stage", ordering="stage")
    def stage_col(self, obj: Adapter) -> str:
        return admin_ui.status_badge(obj.stage)

    @admin.display(description="Status", ordering="status")
    def status_col(self, obj: Adapter) -> str:
        if obj.files_deleted_at:
            return format_html("{} files deleted", admin_ui.status_badge("archived"))
        return admin_ui.status_badge(obj.status)

    @admin.display(description="Served as")
    def serving(self, obj: Adapter) -> str:
        return format_html("<code>{}</code>{}", obj.serving_name,
                           " (in production now)" if obj.stage == Adapter.Stage.PRODUCTION else "")

    @admin.display(description="Approval")
    def approval(self, obj: Adapter) -> str:
        if obj.approval_requested_at:
            who = obj.approval_requested_by.username if obj.approval_requested_by_id else "?"
            return f"Production requested by {who} on {obj.approval_requested_at:%Y-%m-%d %H:%M}; waiting for a " \
                   "team admin who is not the author."
        approved = obj.events.filter(action="approved").select_related("actor").first()
        if approved:
            return f"Approved for production by {approved.actor.username if approved.actor_id else '?'} on " \
                   f"{approved.created_at:%Y-%m-%d %H:%M}."
        return "—"

    @admin.display(description="Download")
    def download(self, obj: Adapter) -> str:
        if obj.files_deleted_at:
            return "—"
        return format_html('<a href="{}">{}.zip</a> (with a README.md model card)',
                           reverse("admin:training_adapter_download", args=[obj.pk]), obj.name)

    # ---- actions ------------------------------------------------------------------------------------

    def _run(self, request, adapter: Adapter, action: str, note: str = "") -> object | None:
        service_name, kwargs, message = STAGE_ACTIONS[action]
        result = self.call_service(request, getattr(lifecycle, service_name), user=request.user, adapter=adapter,
                                   note=note, **kwargs)
        if result is not None:
            text = message
            if action == "production" and result.stage != Adapter.Stage.PRODUCTION:
                text = "Production requested: a team admin who is not the author must approve it."
            self.message_user(request, f"{adapter.name}: {text}", level=messages.SUCCESS)
            self.log_change(request, result, f"{action}: {text}" + (f" Note: {note}" if note else ""))
        return result

    @admin.action(description="Archive selected adapters")
    def archive(self, request, queryset):
        for adapter in queryset:
            self._run(request, adapter, "archive")

    @admin.action(description="Promote selected adapters to candidate")
    def promote_candidate(self, request, queryset):
        for adapter in queryset:
            self._run(request, adapter, "candidate")

    @admin.action(description="Reproduce: clone the task of each selected adapter with identical inputs")
    def reproduce(self, request, queryset):
        for adapter in queryset:
            task = self.call_service(request, lifecycle.adapter_reproduce, user=request.user, adapter=adapter)
            if task is not None:
                self.message_user(request, format_html('Queued <a href="{}">{}</a> to reproduce {}.',
                                                       _task_url(task), task.name, adapter.name), messages.SUCCESS)

    # ---- extra views --------------------------------------------------------------------------------

    def get_urls(self):
        wrap = self.admin_site.admin_view
        return [
            path("<int:pk>/download/", wrap(self.download_view), name="training_adapter_download"),
            path("<int:pk>/ollama/", wrap(self.ollama_view), name="training_adapter_ollama"),
            path("<int:pk>/lifecycle/<str:action>/", wrap(self.lifecycle_view), name="training_adapter_lifecycle"),
            path("<int:pk>/merge/", wrap(self.merge_view), name="training_adapter_merge"),
            path("<int:pk>/reproduce/", wrap(self.reproduce_view), name="training_adapter_reproduce"),
        ] + super().get_urls()

    def _adapter(self, request, pk: int) -> Adapter:
        adapter = self.get_queryset(request).filter(pk=pk).first()
        if adapter is None:
            raise Http404("Adapter not found.")
        return adapter

    def change_view(self, request, object_id, form_url="", extra_context=None):
        extra = dict(extra_context or {})
        adapter = self.get_queryset(request).filter(pk=object_id).first() if str(object_id).isdigit() else None
        if adapter is not None:
            extra["lineage"] = lifecycle.adapter_lineage(user=request.user, adapter=adapter)
            extra["can_write"] = visibility.can_write(request.user, adapter)
            extra["can_approve"] = lifecycle.can_approve(request.user, adapter)
            extra["lifecycle_actions"] = sorted(STAGE_ACTIONS)
            extra["task_url"] = _task_url(lifecycle.origin_task(adapter)) if lifecycle.origin_task(adapter) else ""
        return super().change_view(request, object_id, form_url, extra_context=extra)

    def _zip(self, filename: str, stream) -> StreamingHttpResponse:
        response = StreamingHttpResponse(stream, content_type="application/zip")
        response["Content-Disposition"] = f'attachment; filename="{filename}"'
        return response

    def download_view(self, request, pk: int):
        adapter = self._adapter(request, pk)
        try:
            return self._zip(*lifecycle.adapter_export(user=request.user, adapter=adapter))
        except ApplicationError as exc:
            self.message_user(request, exc.message, level=messages.ERROR)
            return redirect("admin:training_adapter_change", pk)

    def ollama_view(self, request, pk: int):
        adapter = self._adapter(request, pk)
        temperature = request.GET.get("temperature") or None
        try:
            temperature = float(temperature) if temperature is not None else None
            return self._zip(*lifecycle.adapter_ollama_bundle(user=request.user, adapter=adapter,
                                                              from_ref=request.GET.get("from") or None,
                                                              name=request.GET.get("name") or None,
                                                              temperature=temperature))
        except ValueError:
            self.message_user(request, "temperature must be a number.", level=messages.ERROR)
        except ApplicationError as exc:
            self.message_user(request, exc.message, level=messages.ERROR)
        return redirect("admin:training_adapter_change", pk)

    def lifecycle_view(self, request, pk: int, action: str):
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        if action not in STAGE_ACTIONS:
            raise Http404("Unknown action.")
        self._run(request, self._adapter(request, pk), action, note=request.POST.get("note", "")[:2000])
        return redirect("admin:training_adapter_change", pk)

    def merge_view(self, request, pk: int):
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        adapter = self._adapter(request, pk)
        job = self.call_service(request, lifecycle.adapter_merge, user=request.user, adapter=adapter,
                                name=request.POST.get("name") or None)
        if job is not None:
            self.message_user(request, format_html(
                'Queued <a href="{}">merge job {}</a>: the result registers as base model {}.',
                reverse("admin:training_mergejob_change", args=[job.pk]), job.pk, job.output_name), messages.SUCCESS)
            self.log_change(request, adapter, f"merge queued as job {job.pk} -> {job.output_name}")
        return redirect("admin:training_adapter_change", pk)

    def reproduce_view(self, request, pk: int):
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        adapter = self._adapter(request, pk)
        task = self.call_service(request, lifecycle.adapter_reproduce, user=request.user, adapter=adapter)
        if task is None:
            return redirect("admin:training_adapter_change", pk)
        self.message_user(request, f"Queued {task.name} with the inputs of {adapter.name}.", messages.SUCCESS)
        return redirect(_task_url(task))

def _task_url(task) -> str:
    meta = task._meta
    return reverse(f"admin:{meta.app_label}_{meta.model_name}_change", args=[task.pk])


class MergeEventInline(JobEventInline):
    model = MergeEvent


@admin.register(MergeJob)
class MergeJobAdmin(TeamScopedAdmin):
    """Merge jobs are queued from the adapter page (or API/command); this lists them and their logs."""

    list_display = ["name", "team", "status_col", "adapter", "output_name", "result", "duration_col", "created_at"]
    list_filter = ["status", VisibleTeamFilter]
    search_fields = ["name", "adapter__name", "output_name"]
    list_select_related = ["team", "adapter", "result"]
    inlines = [MergeEventInline]
    fields = ["name", "team", "status", "adapter", "output_name", "output_path", "result", "error_code",
              "error_message", "created_by", "created_at", "queued_at", "started_at", "finished_at", "worker",
              "device"]
    readonly_fields = fields

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    @admin.display(description="Status", ordering="status")
    def status_col(self, obj: MergeJob) -> str:
        return admin_ui.status_badge(obj.status)

    @admin.display(description="Duration")
    def duration_col(self, obj: MergeJob) -> str:
        return admin_ui.format_duration(obj.duration_seconds)
