"""Admin base class that applies the team visibility rule to lists, forms, object pages and actions, and the
team list filter that offers only the user's teams. Every app's admin builds on these."""

from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import ForeignKey

from accounts import visibility
from accounts.models import Team
from core.errors import ApplicationError


class TeamScopedAdmin(admin.ModelAdmin):
    """Lists show only the user's teams' rows; changes need a writing role in the row's team.

    ``team_field`` is the lookup to the owning team; ``include_global`` shows rows without a team
    (read-only for non-superusers).
    """

    team_field = "team"
    include_global = False

    def get_queryset(self, request):
        qs = super().get_queryset(request)
        return visibility.visible_to(request.user, qs, team_field=self.team_field,
                                     include_global=self.include_global)

    def formfield_for_foreignkey(self, db_field: ForeignKey, request, **kwargs):
        related = db_field.related_model
        if related is Team:
            kwargs["queryset"] = visibility.teams(request.user, write=True)
        elif any(f.name == "team" for f in related._meta.get_fields()):
            include_global = related._meta.get_field("team").null
            kwargs["queryset"] = visibility.visible_to(request.user, related._default_manager.all(),
                                                       include_global=include_global)
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def has_change_permission(self, request, obj=None):
        allowed = super().has_change_permission(request, obj)
        if not allowed or obj is None:
            return allowed
        return visibility.can_write(request.user, obj, team_field=self.team_field)

    def has_delete_permission(self, request, obj=None):
        allowed = super().has_delete_permission(request, obj)
        if not allowed or obj is None:
            return allowed
        return visibility.can_write(request.user, obj, team_field=self.team_field)

    def has_add_permission(self, request):
        allowed = super().has_add_permission(request)
        return allowed and (request.user.is_superuser or visibility.teams(request.user, write=True).exists())

    def save_model(self, request, obj, form, change):
        if not change and hasattr(obj, "created_by_id") and obj.created_by_id is None:
            obj.created_by = request.user
        super().save_model(request, obj, form, change)

    def call_service(self, request, fn, *args, success: str | None = None, **kwargs):
        """Run a service from an action; rule violations become an error message, not a 500."""
        try:
            result = fn(*args, **kwargs)
        except ApplicationError as exc:
            self.message_user(request, exc.message, level=messages.ERROR)
            return None
        if success:
            self.message_user(request, success, level=messages.SUCCESS)
        return result


class VisibleTeamFilter(admin.SimpleListFilter):
    """Team filter listing only the user's teams (the stock foreign-key filter would list every team)."""

    title = "team"
    parameter_name = "team"
    team_lookup = "team_id"

    def lookups(self, request, model_admin):
        return [(t.pk, t.name) for t in visibility.teams(request.user)]

    def queryset(self, request, queryset):
        value = self.value()
        if value and str(value).isdigit():
            return queryset.filter(**{self.team_lookup: int(value)})
        return queryset
