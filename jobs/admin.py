"""What every job's admin page shares (training, classifier, evaluation, merge, ...): the bulk control actions,
the control buttons' view, the live progress JSON and the URL names they hang on, the latest-events inline, and
a save that changes only what a person may edit (name, priority) through ``jobs.services.job_update``."""

from __future__ import annotations

import json

from django.contrib import admin, messages
from django.core.paginator import Paginator
from django.http import Http404, JsonResponse
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join
from django.views.decorators.http import require_POST

from core.admin_ui import format_duration
from jobs import services
from jobs.scheduling import job_waiting_reason
from jobs.schemas import error_fields, progress_fields

CONTROL_VERBS = {"cancel": "Cancel requested for", "pause": "Pause requested for", "resume": "Resumed",
                 "retry": "Queued again", "clone": "Cloned"}
# Only these are typed by a person; the worker writes every other column of the row while the job runs.
EDITABLE_FIELDS = ("name", "priority")


class JobEventInline(admin.TabularInline):
    """The job's latest 50 events (a long run has thousands of metric lines; the API pages through them all).
    A kind's inline sets ``model`` to its event table."""

    extra = 0
    can_delete = False
    fields = ["created_at", "level", "type", "message"]
    readonly_fields = fields
    ordering = ["-id"]
    max_num = 0
    verbose_name_plural = "Latest events"
    classes = ["collapse"]

    def get_queryset(self, request):
        qs = super().get_queryset(request)
        ids = list(qs.order_by("-id").values_list("id", flat=True)[:50])
        return qs.filter(id__in=ids)


class JobControlAdminMixin:
    """Mix into a ``TeamScopedAdmin`` of a job table. A kind that can be cloned sets ``clone_service``."""

    control_services: dict = {"cancel": services.job_cancel, "pause": services.job_pause,
                              "resume": services.job_resume, "retry": services.job_retry}
    clone_service = None  # e.g. training_task_clone(*, user, task)

    def _service(self, action: str):
        if action == "clone":
            if self.clone_service is None:
                return None
            clone = type(self).clone_service
            return lambda *, user, job: clone(user=user, task=job)
        return self.control_services.get(action)

    # ---- actions (the changelist's bulk control) ------------------------------------------------------

    def _bulk(self, request, queryset, action: str) -> None:
        service = self._service(action)
        done = sum(1 for job in queryset if self.call_service(request, service, user=request.user, job=job) is not None)
        if done:
            self.message_user(request, f"{CONTROL_VERBS[action]} {done} {self.model._meta.verbose_name_plural}.",
                              level=messages.SUCCESS)

    @admin.action(description="Cancel selected jobs")
    def cancel_tasks(self, request, queryset):
        self._bulk(request, queryset, "cancel")

    @admin.action(description="Pause selected jobs (checkpoint, then stop)")
    def pause_tasks(self, request, queryset):
        self._bulk(request, queryset, "pause")

    @admin.action(description="Resume selected paused jobs")
    def resume_tasks(self, request, queryset):
        self._bulk(request, queryset, "resume")

    @admin.action(description="Retry selected failed/cancelled jobs")
    def retry_tasks(self, request, queryset):
        self._bulk(request, queryset, "retry")

    @admin.action(description="Clone selected jobs (same inputs, new run)")
    def clone_tasks(self, request, queryset):
        self._bulk(request, queryset, "clone")

    # ---- editing ------------------------------------------------------------------------------------

    def get_readonly_fields(self, request, obj=None):
        names = [f for _title, opts in (self.fieldsets or []) for f in opts["fields"]] if self.fieldsets else \
            [f.name for f in self.model._meta.fields]
        return [f for f in names if f not in EDITABLE_FIELDS]

    def save_model(self, request, obj, form, change):
        if not change:
            raise PermissionError("jobs are created through their start form or the APIs")
        changed = {name: form.cleaned_data[name] for name in EDITABLE_FIELDS
                   if name in form.changed_data and name in form.cleaned_data}
        # Never obj.save(): that would write back every column the worker updated since the form was read.
        self.call_service(request, services.job_update, user=request.user, job=type(obj).objects.get(pk=obj.pk),
                          **changed)

    # ---- the change page ------------------------------------------------------------------------------

    # action -> (label, the statuses it is valid in): the page shows only the valid ones, and follows the state.
    CONTROLS = {"cancel": ("Cancel", "validating queued running paused"), "pause": ("Pause", "queued running"),
                "resume": ("Resume", "paused"), "retry": ("Retry", "failed cancelled"),
                "clone": ("Clone", "validating queued running paused succeeded failed cancelled")}

    def change_view(self, request, object_id, form_url="", extra_context=None):
        job = self.get_queryset(request).filter(pk=object_id).first() if str(object_id).isdigit() else None
        if job is not None:
            controls = [{"action": action, "label": label, "statuses": statuses,
                         "enabled": job.status in statuses.split(),
                         "url": reverse(f"admin:{self._url_name('control')}", args=[job.pk, action])}
                        for action, (label, statuses) in self.CONTROLS.items() if self._service(action) is not None]
            extra_context = {**(extra_context or {}), "job_controls": controls, "job_headline": self.headline(job),
                             "job_events_url": reverse(f"admin:{self._url_name('events')}", args=[job.pk]),
                             "job_waiting_reason": job_waiting_reason(job),
                             "job_progress_url": reverse(f"admin:{self._url_name('progress')}", args=[job.pk])}
        return super().change_view(request, object_id, form_url, extra_context)

    def headline(self, job) -> list[tuple[str, str]]:
        """The figures the page opens with, beside the progress bar (a kind adds its own metrics)."""
        rows = [("Duration", format_duration(job.duration_seconds))]
        if job.device:
            rows.append(("Device", job.device))
        return rows

    def save_related(self, request, form, formsets, change):
        # A job's inlines (events, checkpoints) are read-only: nothing of them is written. The change message
        # reads what each formset saved, so say "nothing" rather than leave it unset.
        for formset in formsets:
            formset.new_objects, formset.changed_objects, formset.deleted_objects = [], [], []

    # ---- views --------------------------------------------------------------------------------------

    def _url_name(self, suffix: str) -> str:
        return f"{self.model._meta.app_label}_{self.model._meta.model_name}_{suffix}"

    def job_urls(self) -> list:
        wrap = self.admin_site.admin_view
        return [path("<int:pk>/progress.json", wrap(self.progress_view), name=self._url_name("progress")),
                path("<int:pk>/events/", wrap(self.events_view), name=self._url_name("events")),
                path("<int:pk>/control/<str:action>/", wrap(require_POST(self.control_view)),
                     name=self._url_name("control"))]

    def _task(self, request, pk: int):
        task = self.get_queryset(request).filter(pk=pk).first()
        if task is None:
            raise Http404(f"{self.model._meta.verbose_name.capitalize()} not found.")
        return task

    def progress_data(self, job) -> dict:
        events = list(job.events.order_by("-id").values("id", "created_at", "level", "type", "message")[:20])
        error = error_fields(job)
        return {"status": job.status, **progress_fields(job), "metrics": job.metrics,
                "error": error["message"] if error else "", "waiting_reason": job_waiting_reason(job),
                "events": events}

    def events_view(self, request, pk: int):
        """Every event of the job, newest first, 100 a page, filtered by level."""
        job = self._task(request, pk)
        level = request.GET.get("level", "")
        events = job.events.order_by("-id")
        if level in ("info", "warn", "error"):
            events = events.filter(level=level)
        page = Paginator(events, 100).get_page(request.GET.get("page"))
        context = {**self.admin_site.each_context(request), "title": f"Events of {job.name}", "job": job,
                   "page": page, "level": level, "opts": self.model._meta,
                   "levels": [("", "all"), ("info", "info"), ("warn", "warnings"), ("error", "errors")]}
        return TemplateResponse(request, "admin/jobs/events.html", context)

    def progress_view(self, request, pk: int):
        return JsonResponse(self.progress_data(self._task(request, pk)))

    def control_view(self, request, pk: int, action: str):
        job = self._task(request, pk)
        service = self._service(action)
        if service is None:
            raise Http404("Unknown action.")
        result = self.call_service(request, service, user=request.user, job=job,
                                   success=f"{action.capitalize()}: done for {job.name}.")
        target = result if action == "clone" and result is not None else job
        return redirect(f"admin:{self._url_name('change')}", target.pk)


def parameter_table(values: dict, given: dict, reasons: dict, *, raw: dict | None = None) -> str:
    """Parameters as a table a person reads: the value, and whether it was given or chosen by "auto" (and why);
    the raw JSON stays one click away."""
    rows = format_html_join(
        "", '<tr><th style="text-align:left">{}</th><td>{}</td><td>{}</td></tr>',
        ((key, format_value(values[key]), "given" if key in given and given[key] != "auto" else reasons.get(key, "auto"))
         for key in values if key not in ("auto",) and (key in reasons or key in given)))
    others = format_html_join(", ", "{}={}", ((k, format_value(v)) for k, v in values.items()
                                              if k != "auto" and k not in reasons and k not in given))
    raw_json = json.dumps(raw if raw is not None else values, indent=2, default=str, ensure_ascii=False)
    return format_html('<table class="job-params"><thead><tr><th>parameter</th><th>value</th><th>how it was chosen'
                       '</th></tr></thead><tbody>{}</tbody></table><p class="help">Also: {}</p>'
                       '<details><summary>raw</summary><pre>{}</pre></details>', rows, others or "—", raw_json)


def format_value(value) -> str:
    """A metric or parameter as a person reads it: floats to 4 significant digits, lists joined, nested objects
    as key=value."""
    if isinstance(value, bool) or value is None:
        return "—" if value is None else str(value).lower()
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list | tuple):
        return ", ".join(format_value(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}={format_value(v)}" for k, v in value.items())
    return str(value)


def metrics_text(values: dict | None) -> str:
    return format_value(values or {}) or "—"


def value_table(values: dict, *, table_id: str = "", raw: object | None = None) -> str:
    """A JSON object as a two-column table, the raw JSON one click away ("raw")."""
    if not values:
        return "—"
    rows = format_html_join("", '<tr><th style="text-align:left">{}</th><td>{}</td></tr>',
                            ((key, format_value(value)) for key, value in values.items()))
    raw_json = json.dumps(values if raw is None else raw, indent=2, default=str, ensure_ascii=False)
    return format_html('<table class="value-table"{}><tbody>{}</tbody></table>'
                       '<details class="raw"><summary>raw</summary><pre>{}</pre></details>',
                       format_html(' id="{}"', table_id) if table_id else "", rows, raw_json)
