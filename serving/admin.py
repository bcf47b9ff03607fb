"""The chat playground (up to three of the team's models side by side, streamed) and its preference pairs.

The playground is an admin view of ``PreferencePair``: the page lists what ``chat_model_list`` offers the member,
``stream/`` runs one answer through ``chat_completion_stream`` (the same rules as ``/v1/``: visibility, bounds,
rate limits, the model server) as server-sent events, and ``prefer/`` stores "this one is better" through
``preference_pair_create``.
"""

from __future__ import annotations

import json

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, JsonResponse, StreamingHttpResponse
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html
from django.views.decorators.http import require_POST

from accounts.admin_base import TeamScopedAdmin, VisibleTeamFilter
from core.errors import ApplicationError
from serving import services
from serving.inference import GenerationResult
from serving.models import PreferencePair

MAX_MODELS = 3


def _error(exc: ApplicationError) -> JsonResponse:
    return JsonResponse({"detail": exc.message, "code": exc.code, "param": exc.param}, status=exc.status)


def _body(request: HttpRequest) -> dict:
    try:
        body = json.loads(request.body or b"{}")
    except ValueError:
        raise ApplicationError("The body must be JSON.", code="invalid_json") from None
    if not isinstance(body, dict):
        raise ApplicationError("The body must be a JSON object.", code="invalid_json")
    return body


@admin.register(PreferencePair)
class PreferencePairAdmin(TeamScopedAdmin):
    list_display = ("created_at", "team", "prompt_short", "chosen_model", "rejected_model", "verdict", "created_by")
    list_filter = (VisibleTeamFilter, "tie", "created_at")
    list_select_related = ("team", "created_by")
    search_fields = ("chosen_model", "rejected_model", "chosen", "rejected")
    readonly_fields = ("team", "created_by", "messages", "chosen_model", "chosen", "chosen_finish_reason",
                       "rejected_model", "rejected", "rejected_finish_reason", "tie", "params", "created_at")
    actions = ["build_preferences", "build_preferences_and_train"]

    @admin.display(description="Prompt")
    def prompt_short(self, obj: PreferencePair) -> str:
        return obj.prompt[:80]

    @admin.display(description="Verdict")
    def verdict(self, obj: PreferencePair) -> str:
        return "tie" if obj.tie else "chosen > rejected" if obj.is_complete else "incomplete answer"

    def _preferences(self, request, queryset, train: str | None) -> None:
        result = self.call_service(request, services.preference_pair_dataset_create, user=request.user,
                                   pairs=queryset, train=train)
        if result is None:
            return
        version, task = result
        counts = version.report["lineage"]["counts"]
        left = ", ".join(f"{counts[k]} {w}" for k, w in (("ties_left_out", "ties"),
                                                        ("incomplete_left_out", "incomplete"),
                                                        ("identical_left_out", "identical")) if counts[k])
        link = reverse("admin:datasets_app_datasetversion_change", args=[version.pk])
        self.message_user(request, format_html(
            'Preference dataset <a href="{}">{}</a>: {} of {} pairs{}{}', link, version.ref, version.row_count,
            counts["pairs"], f" ({left} left out)" if left else "",
            f"; DPO task {task.name!r} queued." if task else "."), level=messages.SUCCESS)

    @admin.action(description="Build a preference dataset from the selected pairs")
    def build_preferences(self, request, queryset):
        self._preferences(request, queryset, None)

    @admin.action(description="Build a preference dataset and queue DPO on the adapter")
    def build_preferences_and_train(self, request, queryset):
        self._preferences(request, queryset, "adapter")

    def has_add_permission(self, request) -> bool:
        return False  # pairs come from the playground

    def changelist_view(self, request, extra_context=None):
        link = format_html('<a class="button" href="{}">Open the chat playground</a>',
                           reverse("admin:serving_playground"))
        return super().changelist_view(request, {**(extra_context or {}), "title": "Preference pairs",
                                                 "subtitle": link})

    def get_urls(self):
        wrap = self.admin_site.admin_view
        return [
            path("playground/", wrap(self.playground_view), name="serving_playground"),
            path("playground/stream/", wrap(require_POST(self.stream_view)), name="serving_playground_stream"),
            path("playground/prefer/", wrap(require_POST(self.prefer_view)), name="serving_playground_prefer"),
        ] + super().get_urls()

    def _require_view(self, request) -> None:
        if not self.has_view_permission(request):
            raise PermissionDenied

    def playground_view(self, request):
        self._require_view(request)
        models = [m.id for m in services.chat_model_list(user=request.user)]
        context = {**self.admin_site.each_context(request), "title": "Chat playground", "models": models,
                   "max_models": range(MAX_MODELS), "opts": self.model._meta,
                   "stream_url": reverse("admin:serving_playground_stream"),
                   "prefer_url": reverse("admin:serving_playground_prefer"),
                   "pairs_url": reverse("admin:serving_preferencepair_changelist")}
        return TemplateResponse(request, "admin/serving/playground.html", context)

    def stream_view(self, request):
        """One model's answer as server-sent events: ``{"text": ...}`` pieces, then ``{"done": usage}``."""
        self._require_view(request)
        try:
            body = _body(request)
            pieces = services.chat_completion_stream(
                user=request.user, model=str(body.get("model") or ""), messages=body.get("messages"),
                max_tokens=body.get("max_tokens"), temperature=body.get("temperature"), top_p=body.get("top_p"),
                seed=body.get("seed"), stop=body.get("stop") or None)
        except ApplicationError as exc:
            return _error(exc)

        def events():
            try:
                for piece in pieces:
                    if isinstance(piece, GenerationResult):
                        done = {"finish_reason": piece.finish_reason, "prompt_tokens": piece.prompt_tokens,
                                "completion_tokens": piece.completion_tokens}
                        yield f"data: {json.dumps({'done': done})}\n\n"
                    else:
                        yield f"data: {json.dumps({'text': piece})}\n\n"
            except Exception as exc:  # the status line is sent: report in-band
                yield f"data: {json.dumps({'error': str(exc)})}\n\n"

        response = StreamingHttpResponse(events(), content_type="text/event-stream")
        response["Cache-Control"] = "no-cache"
        response["X-Accel-Buffering"] = "no"
        return response

    def prefer_view(self, request):
        self._require_view(request)
        try:
            body = _body(request)
            pair = services.preference_pair_create(
                user=request.user, messages=body.get("messages"), chosen_model=str(body.get("chosen_model") or ""),
                chosen=str(body.get("chosen") or ""), rejected_model=str(body.get("rejected_model") or ""),
                rejected=str(body.get("rejected") or ""), params=body.get("params") or {},
                tie=body.get("tie") is True, chosen_finish_reason=body.get("chosen_finish_reason"),
                rejected_finish_reason=body.get("rejected_finish_reason"))
        except ApplicationError as exc:
            return _error(exc)
        return JsonResponse({"id": pair.pk, "team": pair.team.name}, status=201)
