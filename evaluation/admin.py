"""Admin: evaluation runs with headline numbers, results, charts and side-by-side samples; blind reviews with
a one-pair-at-a-time voting page (the adapter's side is never rendered while voting is open)."""

from __future__ import annotations

import io
import json

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import Prefetch
from django.http import Http404, HttpResponse
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html

from accounts.admin_base import TeamScopedAdmin, VisibleTeamFilter
from core import admin_ui
from core.errors import ApplicationError
from evaluation import services
from evaluation.models import EvaluationEvent, EvaluationRun, Review, Vote
from jobs.admin import value_table


class EventInline(admin.TabularInline):
    model = EvaluationEvent
    classes = ["collapse"]
    extra = 0
    can_delete = False
    fields = ["created_at", "level", "message"]
    readonly_fields = fields
    max_num = 0


def sentence_length_png(results: dict) -> bytes:
    """Sentence-length histograms of reference, baseline and adapter outputs, overlaid as grouped bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    style = results.get("style") or {}
    fig, ax = plt.subplots(figsize=(6, 3))
    try:
        names = [n for n in ("reference", "base", "adapter") if n in style]
        bins = list((style.get("reference") or {}).get("sentence_length", {}).get("histogram", {}))
        width = 0.8 / max(1, len(names))
        for k, name in enumerate(names):
            hist = style[name]["sentence_length"]["histogram"]
            ax.bar([i + k * width for i in range(len(bins))], [hist.get(b, 0) for b in bins], width, label=name)
        ax.set_xticks([i + width * (len(names) - 1) / 2 for i in range(len(bins))], bins)
        ax.set_xlabel("sentence length (units)")
        ax.legend()
        buf = io.BytesIO()
        fig.tight_layout()
        fig.savefig(buf, format="png")
        return buf.getvalue()
    finally:
        plt.close(fig)


def word_frequency_rows(results: dict) -> dict:
    """The word-frequency comparison as rows of proportional bars (HTML, not an image: Chinese words render in
    the browser's fonts, which a server-side image library would need a CJK font for)."""
    rows = results.get("word_frequencies") or []
    if not rows:
        return {}
    sides = [k for k in ("reference", "base", "adapter") if k in rows[0]]
    peak = max((row[k] for row in rows for k in sides), default=0) or 1.0
    return {"sides": sides, "rows": [{"word": row["word"],
                                      "bars": [{"side": k, "value": row[k], "percent": f"{100 * row[k]:.1f}",
                                                "width": round(100 * row[k] / peak, 1)} for k in sides]}
                                     for row in rows]}


# The result groups the run page draws itself (the rest are tables).
DRAWN_RESULTS = {"perplexity", "overlap", "style", "word_frequencies", "classifier"}


def confusion_rows(report: dict | None) -> dict:
    if not report or not report.get("confusion_matrix"):
        return {}
    labels = report.get("labels") or []
    return {"labels": labels, "rows": [{"label": label, "counts": counts}
                                       for label, counts in zip(labels, report["confusion_matrix"], strict=False)]}


@admin.register(EvaluationRun)
class EvaluationRunAdmin(TeamScopedAdmin):
    list_display = ["name", "team", "adapter", "baseline", "status_col", "progress_col", "perplexity", "win_rate",
                    "duration_col", "created_at"]
    list_filter = ["status", VisibleTeamFilter, ("adapter", admin_ui.VisibleRelatedFilter)]
    list_select_related = ["team", "adapter", "other_adapter"]
    search_fields = ["name", "adapter__name", "team__name", "dataset_version__dataset__name"]
    inlines = [EventInline]
    # Results and charts open the page (the template draws them above these); what was evaluated follows, the
    # identifiers, the run's bookkeeping and the raw results collapsed at the bottom.
    fieldsets = [
        ("What was evaluated", {"fields": ["adapter", "baseline", "dataset_version", "metric_names_col",
                                           "generation_table"]}),
        ("Identifiers and times", {"classes": ["collapse"], "fields": [
            "id", "name", "team", "created_by", "status", "priority", "step", "total_steps", "created_at", "queued_at",
            "started_at", "finished_at", "duration_col", "worker", "device", "attempts", "recoveries", "seed",
            "error_code", "error_message", "error_param", "library_versions", "log_path", "results_raw"]}),
    ]
    readonly_fields = [f.name for f in EvaluationRun._meta.fields] + [
        "baseline", "metric_names_col", "generation_table", "duration_col", "results_raw"]
    change_form_template = "admin/evaluation/evaluationrun/change_form.html"
    actions = ["cancel_runs", "create_review", "compare_runs"]

    def has_add_permission(self, request):
        return False

    @admin.display(description="Status", ordering="status")
    def status_col(self, obj: EvaluationRun) -> str:
        return admin_ui.status_badge(obj.status)

    @admin.display(description="Progress")
    def progress_col(self, obj: EvaluationRun) -> str:
        return admin_ui.job_progress(obj)

    @admin.display(description="Duration")
    def duration_col(self, obj: EvaluationRun) -> str:
        return admin_ui.format_duration(obj.duration_seconds)

    @admin.display(description="Compared with")
    def baseline(self, obj: EvaluationRun) -> str:
        return obj.baseline_label

    @admin.display(description="Metrics")
    def metric_names_col(self, obj: EvaluationRun) -> str:
        return ", ".join(obj.metric_names or []) or "the defaults"

    @admin.display(description="Generation")
    def generation_table(self, obj: EvaluationRun) -> str:
        return value_table(obj.generation or {})

    @admin.display(description="Results (raw)")
    def results_raw(self, obj: EvaluationRun) -> str:
        return format_html("<pre>{}</pre>", json.dumps(obj.results or {}, indent=2, ensure_ascii=False, default=str))

    @admin.display(description="Perplexity")
    def perplexity(self, obj: EvaluationRun) -> str:
        return obj.ppl_summary or "—"

    def get_queryset(self, request):
        # The win-rate column reads the latest closed review's votes: prefetched for the page, not a query per row.
        closed = Review.objects.filter(status=Review.Status.CLOSED).prefetch_related("pairs__votes")
        return super().get_queryset(request).prefetch_related(Prefetch("reviews", queryset=closed,
                                                                       to_attr="closed_reviews"))

    @admin.display(description="Adapter win rate")
    def win_rate(self, obj: EvaluationRun) -> str:
        reviews = getattr(obj, "closed_reviews", None)
        if reviews is None:  # not loaded through get_queryset
            reviews = list(obj.reviews.filter(status=Review.Status.CLOSED).prefetch_related("pairs__votes"))
        if not reviews:
            return "—"
        rate = services.review_win_rate(reviews[0])  # the latest (reviews are ordered newest first)
        return f"{rate:.0%}" if rate is not None else "—"

    @admin.action(description="Cancel selected runs")
    def cancel_runs(self, request, queryset):
        for run in queryset:
            self.call_service(request, services.evaluation_run_cancel, user=request.user, run=run)

    @admin.action(description="Create a blind A/B review")
    def create_review(self, request, queryset):
        for run in queryset:
            review = self.call_service(request, services.review_create, user=request.user, run=run)
            if review:
                self.message_user(request, format_html('Review <a href="{}">{}</a> created.',
                                                       reverse("admin:evaluation_review_vote", args=[review.pk]),
                                                       review.pk))

    @admin.action(description="Compare selected runs")
    def compare_runs(self, request, queryset):
        runs = list(queryset.select_related("adapter", "dataset_version"))
        if len({r.dataset_version_id for r in runs}) > 1:
            self.message_user(request, "Compare runs of the same dataset version.", level=messages.ERROR)
            return None
        rows = [{"run": r, "ppl": (r.results or {}).get("perplexity") or {},
                 "overlap": ((r.results or {}).get("overlap") or {}).get("adapter") or {},
                 "style": (((r.results or {}).get("style") or {}).get("adapter") or {}).get("distance") or {}}
                for r in runs]
        context = {**self.admin_site.each_context(request), "opts": self.model._meta, "rows": rows,
                   "title": "Compare evaluation runs"}
        return TemplateResponse(request, "admin/evaluation/evaluationrun/compare.html", context)

    def get_urls(self):
        return [path("<int:pk>/sentence-lengths.png", self.admin_site.admin_view(self.chart_view),
                     name="evaluation_evaluationrun_chart")] + super().get_urls()

    def chart_view(self, request, pk: int):
        run = self.get_queryset(request).filter(pk=pk).first()
        if run is None:
            raise Http404
        return HttpResponse(sentence_length_png(run.results or {}), content_type="image/png")

    def change_view(self, request, object_id, form_url="", extra_context=None):
        run = self.get_queryset(request).filter(pk=object_id).first()
        results = (run.results or {}) if run else {}
        extra = {"samples": run.samples.all()[:50] if run else [], "results": results,
                 "word_chart": word_frequency_rows(results), "confusion": confusion_rows(results.get("classifier")),
                 # what the page has no chart of (preference rewards, ...) reads as a table, raw one click away
                 "other_results": [(name.replace("_", " "), value_table(value)) for name, value in results.items()
                                   if name not in DRAWN_RESULTS and isinstance(value, dict)]}
        return super().change_view(request, object_id, form_url, extra_context={**(extra_context or {}), **extra})


class ReviewTeamFilter(VisibleTeamFilter):
    team_lookup = "run__team_id"


@admin.register(Review)
class ReviewAdmin(TeamScopedAdmin):
    team_field = "run__team"
    list_display = ["id", "run", "team", "status_col", "pairs_col", "created_at", "vote_link"]
    list_filter = ["status", ReviewTeamFilter]
    search_fields = ["run__name", "run__adapter__name"]
    list_select_related = ["run", "run__team"]
    readonly_fields = ["run", "created_by", "status", "seed", "created_at", "closed_at"]
    fields = readonly_fields
    actions = ["close_reviews", "build_preferences", "build_preferences_and_train"]

    def has_add_permission(self, request):
        return False

    @admin.display(description="Team", ordering="run__team__name")
    def team(self, obj: Review) -> str:
        return obj.run.team.name

    def _preferences(self, request, queryset, train: str | None) -> None:
        for review in queryset:
            result = self.call_service(request, services.review_to_preferences, user=request.user, review=review,
                                       train=train)
            if result is None:
                continue
            version, task = result
            self.message_user(request, f"Review {review.pk}: preference dataset {version.ref} ({version.row_count} "
                                       "pairs)" + (f"; DPO task {task.name!r} queued." if task else "."),
                              level=messages.SUCCESS)

    @admin.action(description="Build a preference dataset from the votes (closed reviews)")
    def build_preferences(self, request, queryset):
        self._preferences(request, queryset, None)

    @admin.action(description="Build a preference dataset and queue DPO on the adapter")
    def build_preferences_and_train(self, request, queryset):
        self._preferences(request, queryset, "adapter")

    @admin.display(description="Status", ordering="status")
    def status_col(self, obj: Review) -> str:
        return admin_ui.status_badge(obj.status)

    @admin.display(description="Pairs")
    def pairs_col(self, obj: Review) -> int:
        return obj.pairs.count()

    @admin.display(description="Vote")
    def vote_link(self, obj: Review):
        return format_html('<a href="{}">vote</a> · <a href="{}">results</a> · <a href="{}">CSV</a>',
                           reverse("admin:evaluation_review_vote", args=[obj.pk]),
                           reverse("admin:evaluation_review_results", args=[obj.pk]),
                           reverse("admin:evaluation_review_csv", args=[obj.pk]))

    @admin.action(description="Close voting (reveals the sides)")
    def close_reviews(self, request, queryset):
        for review in queryset:
            self.call_service(request, services.review_close, user=request.user, review=review)

    def get_urls(self):
        wrap = self.admin_site.admin_view
        return [path("<int:pk>/vote/", wrap(self.vote_view), name="evaluation_review_vote"),
                path("<int:pk>/results/", wrap(self.results_view), name="evaluation_review_results"),
                path("<int:pk>/votes.csv", wrap(self.csv_view), name="evaluation_review_csv")] + super().get_urls()

    def _review(self, request, pk: int) -> Review:
        review = self.get_queryset(request).filter(pk=pk).first()
        if review is None:
            raise Http404
        return review

    def vote_view(self, request, pk: int):
        review = self._review(request, pk)
        if request.method == "POST":
            try:
                services.vote_cast(user=request.user, pair=int(request.POST.get("pair", 0)),
                                   choice=request.POST.get("choice", ""), comment=request.POST.get("comment", ""))
            except (ApplicationError, ValueError) as exc:
                messages.error(request, str(exc))
            return redirect("admin:evaluation_review_vote", pk=pk)
        pair = services.review_next_pair(user=request.user, review=review) \
            if review.status == Review.Status.OPEN else None
        done = Vote.objects.filter(pair__review=review, reviewer=request.user).count()
        context = {**self.admin_site.each_context(request), "opts": self.model._meta, "review": review,
                   "pair": pair, "done": done, "total": review.pairs.count(), "title": f"Review {review.pk}",
                   "choices": Vote.Choice.choices}
        return TemplateResponse(request, "admin/evaluation/review/vote.html", context)

    def results_view(self, request, pk: int):
        review = self._review(request, pk)
        context = {**self.admin_site.each_context(request), "opts": self.model._meta, "review": review,
                   "results": services.review_results(review=review),
                   "title": f"Results of review {review.pk}"}
        return TemplateResponse(request, "admin/evaluation/review/results.html", context)

    def csv_view(self, request, pk: int):
        review = self._review(request, pk)
        if not self.has_view_permission(request, review):
            raise PermissionDenied
        response = HttpResponse(services.votes_csv(review=review), content_type="text/csv")
        response["Content-Disposition"] = f'attachment; filename="review-{review.pk}-votes.csv"'
        return response
