"""Admin for datasets: upload form, versions inline, validation report, stats with histogram, preview, split.

Every page goes through the team-scoped querysets of ``core.admin.TeamScopedAdmin``; the extra
views are added with ``get_urls`` and wrapped in ``admin_site.admin_view``, and they look objects up
in ``get_queryset(request)`` so another team's version is a 404 here as everywhere.
"""

from __future__ import annotations

import json

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import NestedObjects
from django.core.exceptions import PermissionDenied
from django.db import router
from django.db.models import Count, ForeignKey, Max, Q
from django.http import FileResponse, Http404, HttpResponse
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join

from accounts import visibility
from accounts.admin_base import TeamScopedAdmin, VisibleTeamFilter
from catalog.models import BaseModel
from core.admin_ui import status_badge
from core.errors import ApplicationError
from datasets_app import formats, services
from datasets_app.models import Dataset, DatasetVersion
from datasets_app.validation import CODES
from jobs.registry import kinds


def _base_model_queryset(user):
    return visibility.visible_to(user, BaseModel.objects.filter(available=True), include_global=True)


def _change_url(obj) -> str:
    meta = obj._meta
    return reverse(f"admin:{meta.app_label}_{meta.model_name}_change", args=[obj.pk])


class VersionTeamFilter(VisibleTeamFilter):
    team_lookup = "dataset__team_id"


def _status_badge(version: DatasetVersion) -> str:
    return status_badge(version.status, version.get_status_display())


def _issues(version: DatasetVersion) -> str:
    if not version.error_count and not version.warning_count:
        return "—"
    return format_html('<a href="{}">{} errors, {} warnings</a>',
                       reverse("admin:datasets_app_datasetversion_report", args=[version.pk]),
                       version.error_count, version.warning_count)


class DatasetVersionInline(admin.TabularInline):
    model = DatasetVersion
    fk_name = "dataset"
    extra = 0
    can_delete = False
    show_change_link = True
    fields = ["number", "status_badge", "format", "row_count", "split", "source_filename", "issues", "created_by",
              "created_at"]
    readonly_fields = fields
    ordering = ["-number"]

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    @admin.display(description="Status")
    def status_badge(self, obj: DatasetVersion) -> str:
        return _status_badge(obj)

    @admin.display(description="Split")
    def split(self, obj: DatasetVersion) -> str:
        return f"{obj.split_role} of v{obj.parent.number}" if obj.parent_id else ""

    @admin.display(description="Problems")
    def issues(self, obj: DatasetVersion) -> str:
        return _issues(obj)


class UploadForm(forms.Form):
    team = forms.ModelChoiceField(queryset=None, empty_label=None)
    name = forms.CharField(max_length=100, help_text="A new name creates a dataset; an existing one adds a version.")
    format = forms.ChoiceField(choices=[("", "Detect from the first example"),
                                        *formats.FORMAT_LABELS.items()], required=False)
    description = forms.CharField(widget=forms.Textarea(attrs={"rows": 2}), required=False)
    base_model = forms.ModelChoiceField(queryset=None, required=False, empty_label="(no token check)",
                                        help_text="Check example lengths with this model's tokenizer.")
    columns = forms.CharField(required=False, max_length=2000,
                              help_text="Column mapping our_key=file_key,... (e.g. instruction=question,"
                                        "input=context,output=answer); empty when the keys are ours.")
    skip_invalid = forms.BooleanField(required=False, label="Skip invalid rows",
                                      help_text="Import the valid rows and keep the report of the others "
                                                "(default: nothing is imported when a row is invalid).")
    file = forms.FileField(help_text="JSONL, a JSON array, CSV with a header, Parquet, or a .txt / .md corpus.")

    def __init__(self, *args, user=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["team"].queryset = visibility.teams(user, write=True)
        self.fields["base_model"].queryset = _base_model_queryset(user)


class BaseModelChoiceForm(forms.Form):
    base_model = forms.ModelChoiceField(queryset=None, required=False, empty_label="(characters only)")
    n = forms.IntegerField(min_value=1, max_value=services.PREVIEW_MAX, initial=5, required=False)

    def __init__(self, *args, user=None, require_model: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["base_model"].queryset = _base_model_queryset(user)
        self.fields["base_model"].required = require_model
        if require_model:
            self.fields["base_model"].empty_label = None


class SplitForm(forms.Form):
    val_ratio = forms.FloatField(min_value=0.0001, max_value=0.9999, initial=0.1,
                                 help_text="Share of examples held out for validation.")
    seed = forms.IntegerField(min_value=0, initial=42)
    validation = forms.ModelChoiceField(queryset=None, required=False, empty_label="(cut one out of this version)",
                                        help_text="Or use an existing version of the team as the validation set.")

    def __init__(self, *args, version: DatasetVersion, user=None, **kwargs):
        super().__init__(*args, **kwargs)
        qs = visibility.visible_to(user, DatasetVersion.objects.select_related("dataset"), team_field="dataset__team")
        self.fields["validation"].queryset = qs.filter(dataset__team_id=version.dataset.team_id,
                                                       status=DatasetVersion.Status.READY).exclude(pk=version.pk)


@admin.register(Dataset)
class DatasetAdmin(TeamScopedAdmin):
    list_display = ["name", "team", "format", "versions_count", "latest", "created_by", "created_at"]
    list_filter = ["format", VisibleTeamFilter]
    search_fields = ["name", "description", "team__name"]
    list_select_related = ["team", "created_by"]
    fields = ["name", "team", "format", "description", "created_by", "created_at"]
    readonly_fields = ["name", "team", "format", "created_by", "created_at"]
    inlines = [DatasetVersionInline]
    change_list_template = "admin/datasets_app/dataset/change_list.html"
    change_form_template = "admin/datasets_app/dataset/change_form.html"

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(n_versions=Count("versions"), latest_number=Max("versions__number"))

    @admin.display(description="Versions", ordering="n_versions")
    def versions_count(self, obj: Dataset) -> int:
        return obj.n_versions

    @admin.display(description="Latest", ordering="latest_number")
    def latest(self, obj: Dataset) -> str:
        return f"v{obj.latest_number}" if obj.latest_number else "—"

    def get_urls(self):
        extra = [path("upload/", self.admin_site.admin_view(self.upload_view), name="datasets_app_dataset_upload")]
        return extra + super().get_urls()

    def add_view(self, request, form_url="", extra_context=None):
        # A dataset is created by its first upload: "Add" opens the upload form.
        return redirect("admin:datasets_app_dataset_upload")

    def upload_view(self, request):
        if not self.has_add_permission(request):
            raise PermissionDenied
        initial = {}
        dataset_id = request.GET.get("dataset")
        if dataset_id and dataset_id.isdigit():
            dataset = self.get_queryset(request).filter(pk=int(dataset_id)).first()
            if dataset is not None:
                initial = {"team": dataset.team_id, "name": dataset.name, "format": dataset.format}
        form = UploadForm(request.POST or None, request.FILES or None, user=request.user, initial=initial)
        if request.method == "POST" and form.is_valid():
            data = form.cleaned_data
            try:
                version = services.dataset_upload(user=request.user, team=data["team"], name=data["name"],
                                                  fileobj=data["file"], filename=data["file"].name,
                                                  format=data["format"] or None, description=data["description"],
                                                  base_model=data["base_model"], columns=data["columns"] or None,
                                                  skip_invalid=data["skip_invalid"])
            except ApplicationError as exc:
                form.add_error(exc.param if exc.param in form.fields else None, exc.message)
            else:
                if not version.is_ready:
                    self.message_user(request, f"{version.ref} failed validation with {version.error_count} "
                                               "error(s); nothing was imported. See the report.", messages.ERROR)
                    return redirect("admin:datasets_app_datasetversion_report", version.pk)
                if getattr(version, "deduplicated", False):
                    self.message_user(request, f"The same content is already {version.ref}; no new version.",
                                      messages.WARNING)
                elif version.skipped_count:
                    self.message_user(request, f"Imported {version.row_count} examples as {version.ref} "
                                               f"({version.format}); {version.skipped_count} invalid row(s) skipped "
                                               f"with {version.error_count} error(s), see the report.",
                                      messages.WARNING)
                else:
                    self.message_user(request, f"Imported {version.row_count} examples as {version.ref} "
                                               f"({version.format}, {version.warning_count} warning(s)).",
                                      messages.SUCCESS)
                return redirect("admin:datasets_app_datasetversion_change", version.pk)
        context = {**self.admin_site.each_context(request), "opts": self.model._meta, "form": form,
                   "title": "Upload a dataset", "codes": CODES}
        return TemplateResponse(request, "admin/datasets_app/upload.html", context)

    def get_deleted_objects(self, objs, request):
        deleted, model_count, perms_needed, protected = super().get_deleted_objects(objs, request)
        if protected:
            # A split PROTECTs the version it was cut from, but it is deleted with the dataset too
            # (the service deletes splits first); only protection from outside the datasets counts.
            collector = NestedObjects(using=router.db_for_write(Dataset))
            collector.collect(objs)
            ids = {obj.pk for obj in objs}
            if all(isinstance(o, DatasetVersion) and o.dataset_id in ids for o in collector.protected):
                protected = []
        return deleted, model_count, perms_needed, protected

    def delete_model(self, request, obj: Dataset) -> None:
        self.call_service(request, services.dataset_delete, user=request.user, dataset=obj)

    def delete_queryset(self, request, queryset) -> None:
        for obj in queryset:
            self.delete_model(request, obj)


@admin.register(DatasetVersion)
class DatasetVersionAdmin(TeamScopedAdmin):
    team_field = "dataset__team"
    list_display = ["version_ref", "team", "status_badge", "format", "row_count", "split", "issues", "created_by",
                    "created_at"]
    list_filter = ["status", "format", "split_role", VersionTeamFilter]
    search_fields = ["dataset__name", "sha256", "source_filename", "dataset__team__name"]
    list_select_related = ["dataset", "dataset__team", "created_by", "parent"]
    readonly_fields = ["dataset", "number", "status_badge", "format", "format_reason", "mapping_display", "row_count",
                       "skipped", "sha256", "path", "source_filename", "created_by", "created_at", "parent",
                       "split_role", "split_seed", "split_ratio", "issues", "stats_table", "lineage", "used_by"]
    fields = readonly_fields
    actions = ["split_action"]
    change_form_template = "admin/datasets_app/datasetversion/change_form.html"

    def has_add_permission(self, request):
        return False  # versions come from uploads and splits

    @admin.display(description="Version", ordering="dataset__name")
    def version_ref(self, obj: DatasetVersion) -> str:
        return obj.ref

    @admin.display(description="Team", ordering="dataset__team__name")
    def team(self, obj: DatasetVersion) -> str:
        return obj.dataset.team.name

    @admin.display(description="Status", ordering="status")
    def status_badge(self, obj: DatasetVersion) -> str:
        return _status_badge(obj)

    @admin.display(description="Split")
    def split(self, obj: DatasetVersion) -> str:
        if not obj.parent_id:
            return ""
        extra = f", seed {obj.split_seed}" if obj.split_seed is not None else ""
        return f"{obj.split_role} of {obj.parent.ref} ({obj.split_ratio or 0:.0%} val{extra})"

    @admin.display(description="Problems")
    def issues(self, obj: DatasetVersion) -> str:
        return _issues(obj)

    @admin.display(description="Format known by")
    def format_reason(self, obj: DatasetVersion) -> str:
        return (obj.report or {}).get("format_reason") or "—"

    @admin.display(description="Column mapping")
    def mapping_display(self, obj: DatasetVersion) -> str:
        if not obj.mapping:
            return "—"
        return formats.ColumnMapping.model_validate(obj.mapping).describe()

    @admin.display(description="Invalid rows skipped")
    def skipped(self, obj: DatasetVersion) -> str:
        if not (obj.report or {}).get("skip_invalid"):
            return "— (all or nothing)"
        return f"{obj.skipped_count} of {(obj.report or {}).get('examples', 0)}"

    @admin.display(description="Statistics")
    def stats_table(self, obj: DatasetVersion) -> str:
        stats = obj.stats or {}
        chars = stats.get("characters", {})
        turns = stats.get("turns", {})
        parts = [f"rows {stats.get('rows', obj.row_count)}", f"duplicates {stats.get('duplicates', 0)}"]
        if chars:
            parts.append(f"characters median {chars.get('median')} / max {chars.get('max')}")
        if turns:
            parts.append(f"messages {turns.get('messages')} ({turns.get('assistant')} assistant)")
        if stats.get("labels"):
            parts.append("labels " + ", ".join(f"{k}: {v}" for k, v in stats["labels"].items()))
        return " · ".join(parts)

    @admin.display(description="Where the rows came from")
    def lineage(self, obj: DatasetVersion) -> str:
        """Versions built from judged pairs: a blind A/B review (the review, the two models, every pair's vote) or the
        chat playground (every pair, its two models, who chose and when)."""
        lineage = (obj.report or {}).get("lineage") or {}
        if lineage.get("source") == "playground":
            return self._playground_lineage(lineage)
        if lineage.get("source") != "review":
            return "—"
        models = lineage.get("models") or {}
        head = format_html(
            "Review {} of evaluation run {} ({}): adapter <b>{}</b> vs baseline <b>{}</b>; counts {}.",
            lineage.get("review"), lineage.get("run"), lineage.get("run_name", ""),
            (models.get("adapter") or {}).get("name", "?"), (models.get("baseline") or {}).get("name", "?"),
            ", ".join(f"{k} {v}" for k, v in (lineage.get("counts") or {}).items()) or "—")
        rows = format_html_join(
            "", "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            ((r.get("row"), r.get("pair_order"), r.get("vote"), r.get("reviewer"), r.get("chosen"),
              (r.get("prompt") or "")[:120]) for r in lineage.get("pairs") or []))
        return format_html('{}<table><thead><tr><th>row</th><th>pair</th><th>vote</th><th>reviewer</th>'
                           '<th>chosen (winner)</th><th>prompt</th></tr></thead><tbody>{}</tbody></table>', head, rows)

    def _playground_lineage(self, lineage: dict) -> str:
        counts = lineage.get("counts") or {}
        head = format_html("Chat-playground pairs of team {}: {} of {} pairs used; left out: {} tie(s), {} incomplete, "
                           "{} with identical answers.", lineage.get("team", "?"), counts.get("used", 0),
                           counts.get("pairs", 0), counts.get("ties_left_out", 0),
                           counts.get("incomplete_left_out", 0), counts.get("identical_left_out", 0))
        rows = format_html_join(
            "", '<tr><td>{}</td><td><a href="{}">{}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>',
            ((r.get("row"), reverse("admin:serving_preferencepair_change", args=[r.get("pair")]), r.get("pair"),
              r.get("chosen_model"), r.get("rejected_model"), r.get("chosen_by") or "—", r.get("chosen_at", "")[:19],
              (r.get("prompt") or "")[:120]) for r in lineage.get("pairs") or []))
        return format_html('{}<table><thead><tr><th>row</th><th>pair</th><th>chosen model</th><th>rejected model</th>'
                           '<th>chosen by</th><th>when</th><th>prompt</th></tr></thead><tbody>{}</tbody></table>',
                           head, rows)

    @admin.display(description="Used by")
    def used_by(self, obj: DatasetVersion) -> str:
        """The jobs of every kind that train, validate or evaluate on this version, and what they produced."""
        parts = []
        for kind in kinds():
            links = [f.name for f in kind.model._meta.get_fields()
                     if isinstance(f, ForeignKey) and f.related_model is DatasetVersion]
            if not links:
                continue
            cond = Q()
            for name in links:
                cond |= Q(**{name: obj})
            # A job uses only its own team's data, so these jobs share the version's visibility.
            for job in kind.model.objects.filter(cond, team_id=obj.dataset.team_id).order_by("-created_at")[:50]:
                made = format_html_join(", ", '<a href="{}">{}</a>', ((_change_url(o), str(o))
                                                                     for o in kind.outputs(job)))
                parts.append(format_html('<a href="{}">{} {}</a> ({}){}', _change_url(job), job._meta.verbose_name,
                                         job.name, job.status, format_html(" → {}", made) if made else ""))
        return format_html_join(", ", "{}", ((p,) for p in parts)) if parts else "—"

    # -- extra pages ---------------------------------------------------------------------------------------------

    def get_urls(self):
        def view(fn, suffix):
            return path(f"<int:pk>/{suffix}/", self.admin_site.admin_view(fn),
                        name=f"datasets_app_datasetversion_{suffix.replace('.', '_')}")

        extra = [view(self.report_view, "report"), view(self.stats_view, "stats"),
                 view(self.histogram_view, "histogram.png"), view(self.preview_view, "preview"),
                 view(self.split_view, "split"), view(self.download_view, "download")]
        return extra + super().get_urls()

    def _version(self, request, pk: int) -> DatasetVersion:
        version = self.get_queryset(request).filter(pk=pk).first()
        if version is None or not self.has_view_or_change_permission(request, version):
            raise Http404("Dataset version not found.")
        return version

    def _context(self, request, version: DatasetVersion, title: str, **extra) -> dict:
        return {**self.admin_site.each_context(request), "opts": self.model._meta, "original": version,
                "version": version, "title": title, **extra}

    def report_view(self, request, pk: int):
        version = self._version(request, pk)
        report = version.report or {}
        if request.GET.get("format") == "json":
            response = HttpResponse(json.dumps({"version": version.ref, "status": version.status, **report},
                                               ensure_ascii=False, indent=2),
                                    content_type="application/json; charset=utf-8")
            response["Content-Disposition"] = f'attachment; filename="{version.dataset.name}-v{version.number}' \
                                              '.report.json"'
            return response
        issues = [{**i, "severity": "error"} for i in report.get("errors", [])] + \
            [{**i, "severity": "warning"} for i in report.get("warnings", [])]
        issues.sort(key=lambda i: (i["line"] is None, i["line"] or 0))
        counts = [(code, n, CODES.get(code, ("", ""))[0], CODES.get(code, ("", ""))[1])
                  for code, n in sorted(report.get("counts", {}).items())]
        return TemplateResponse(request, "admin/datasets_app/datasetversion/report.html",
                                self._context(request, version, f"Validation report of {version.ref}",
                                              report=report, issues=issues, counts=counts))

    def stats_view(self, request, pk: int):
        version = self._version(request, pk)
        form = BaseModelChoiceForm(request.GET or None, user=request.user)
        model = form.cleaned_data.get("base_model") if form.is_valid() else None
        try:
            stats = services.version_stats(version=version, base_model=model) if version.is_ready or model is None \
                else version.stats
        except ApplicationError as exc:
            self.message_user(request, exc.message, messages.ERROR)
            stats, model = version.stats or {}, None
        tokens = (stats.get("tokens") or {}).get(model.name) if model else None
        chart = reverse("admin:datasets_app_datasetversion_histogram_png", args=[version.pk])
        if model:
            chart += f"?base_model={model.pk}"
        return TemplateResponse(request, "admin/datasets_app/datasetversion/stats.html",
                                self._context(request, version, f"Statistics of {version.ref}", form=form,
                                              stats=stats, model=model, tokens=tokens, chart=chart,
                                              stats_json=json.dumps(stats, ensure_ascii=False, indent=2)))

    def histogram_view(self, request, pk: int):
        version = self._version(request, pk)
        ref = request.GET.get("base_model")
        try:
            model = services.resolve_base_model(user=request.user, ref=ref) if ref else None
            png = services.version_histogram_png(version=version, base_model=model)
        except ApplicationError as exc:
            return HttpResponse(exc.message, status=exc.status, content_type="text/plain")
        return HttpResponse(png, content_type="image/png")

    def preview_view(self, request, pk: int):
        version = self._version(request, pk)
        form = BaseModelChoiceForm(request.GET or None, user=request.user, require_model=True)
        preview = None
        if form.is_bound and form.is_valid():
            try:
                preview = services.version_preview(version=version, base_model=form.cleaned_data["base_model"],
                                                   n=form.cleaned_data.get("n") or 5)
            except ApplicationError as exc:
                self.message_user(request, exc.message, messages.ERROR)
        return TemplateResponse(request, "admin/datasets_app/datasetversion/preview.html",
                                self._context(request, version, f"Preview of {version.ref}", form=form,
                                              preview=preview))

    def split_view(self, request, pk: int):
        version = self._version(request, pk)
        if not self.has_change_permission(request, version):
            raise PermissionDenied
        form = SplitForm(request.POST or None, version=version, user=request.user)
        if request.method == "POST" and form.is_valid():
            data = form.cleaned_data
            pair = self.call_service(request, services.dataset_version_split, user=request.user, version=version,
                                     val_ratio=data["val_ratio"], seed=data["seed"], validation=data["validation"])
            if pair:
                train, val = pair
                self.message_user(request, f"Split {version.ref}: train {train.ref} ({train.row_count} rows), "
                                           f"validation {val.ref} ({val.row_count} rows).", messages.SUCCESS)
                return redirect("admin:datasets_app_datasetversion_change", train.pk)
        return TemplateResponse(request, "admin/datasets_app/datasetversion/split.html",
                                self._context(request, version, f"Split {version.ref}", form=form))

    def download_view(self, request, pk: int):
        version = self._version(request, pk)
        try:
            path_ = services.version_file(version)
        except ApplicationError as exc:
            self.message_user(request, exc.message, messages.ERROR)
            return redirect("admin:datasets_app_datasetversion_change", version.pk)
        return FileResponse(path_.open("rb"), as_attachment=True,
                            filename=f"{version.dataset.name}-v{version.number}.jsonl",
                            content_type="application/jsonl")

    @admin.action(description="Split into train / validation…")
    def split_action(self, request, queryset):
        versions = list(queryset[:2])
        if len(versions) != 1:
            self.message_user(request, "Select exactly one version to split.", messages.WARNING)
            return None
        return redirect("admin:datasets_app_datasetversion_split", versions[0].pk)

    def delete_model(self, request, obj: DatasetVersion) -> None:
        self.call_service(request, services.dataset_version_delete, user=request.user, version=obj)

    def delete_queryset(self, request, queryset) -> None:
        # Splits before the versions they were cut from (a parent is protected by its splits).
        for obj in sorted(queryset, key=lambda v: v.parent_id is None):
            self.delete_model(request, obj)
