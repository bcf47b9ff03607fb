"""What every job's admin page shares (training and classifier tasks): the bulk control actions, the
control buttons' view, the live progress JSON and the URL names they hang on. A job admin sets
``control_services`` (action -> service taking ``user`` and ``task``) and lists the actions it offers."""

from __future__ import annotations

from django.contrib import admin, messages
from django.http import Http404, HttpResponseNotAllowed, JsonResponse
from django.shortcuts import redirect
from django.urls import path

CONTROL_VERBS = {"cancel": "Cancel requested for", "pause": "Pause requested for", "resume": "Resumed",
                 "retry": "Queued again", "clone": "Cloned"}


class JobControlAdminMixin:
    control_services: dict = {}  # e.g. {"cancel": services.training_task_cancel, ...}

    # ---- actions (the changelist's bulk control) ------------------------------------------------------

    def _bulk(self, request, queryset, action: str) -> None:
        service = self.control_services[action]
        done = sum(1 for task in queryset
                   if self.call_service(request, service, user=request.user, task=task) is not None)
        if done:
            self.message_user(request, f"{CONTROL_VERBS[action]} {done} task(s).", level=messages.SUCCESS)

    @admin.action(description="Cancel selected tasks")
    def cancel_tasks(self, request, queryset):
        self._bulk(request, queryset, "cancel")

    @admin.action(description="Pause selected tasks (checkpoint, then stop)")
    def pause_tasks(self, request, queryset):
        self._bulk(request, queryset, "pause")

    @admin.action(description="Resume selected paused tasks")
    def resume_tasks(self, request, queryset):
        self._bulk(request, queryset, "resume")

    @admin.action(description="Retry selected failed/cancelled tasks")
    def retry_tasks(self, request, queryset):
        self._bulk(request, queryset, "retry")

    @admin.action(description="Clone selected tasks (same inputs, new run)")
    def clone_tasks(self, request, queryset):
        self._bulk(request, queryset, "clone")

    # ---- views --------------------------------------------------------------------------------------

    def _url_name(self, suffix: str) -> str:
        return f"{self.model._meta.app_label}_{self.model._meta.model_name}_{suffix}"

    def job_urls(self) -> list:
        wrap = self.admin_site.admin_view
        return [path("<int:pk>/progress.json", wrap(self.progress_view), name=self._url_name("progress")),
                path("<int:pk>/control/<str:action>/", wrap(self.control_view), name=self._url_name("control"))]

    def _task(self, request, pk: int):
        task = self.get_queryset(request).filter(pk=pk).first()
        if task is None:
            raise Http404(f"{self.model._meta.verbose_name.capitalize()} not found.")
        return task

    def progress_data(self, task) -> dict:
        events = list(task.events.order_by("-id").values("id", "created_at", "level", "type", "message")[:20])
        return {"status": task.status, "step": task.step, "total_steps": task.total_steps,
                "percent": task.progress_percent, "epoch": task.epoch, "eta_seconds": task.eta_seconds,
                "tokens_per_second": task.tokens_per_second, "tokens_seen": task.tokens_seen,
                "metrics": task.metrics, "error": task.error_message, "events": events}

    def progress_view(self, request, pk: int):
        return JsonResponse(self.progress_data(self._task(request, pk)))

    def control_view(self, request, pk: int, action: str):
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        task = self._task(request, pk)
        service = self.control_services.get(action)
        if service is None:
            raise Http404("Unknown action.")
        result = self.call_service(request, service, user=request.user, task=task,
                                   success=f"{action.capitalize()}: done for {task.name}.")
        target = result if action == "clone" and result is not None else task
        return redirect(f"admin:{self._url_name('change')}", target.pk)
