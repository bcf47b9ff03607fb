from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.utils.html import format_html

from accounts import selectors, services, visibility
from accounts.models import ApiToken, Membership, Team
from core.errors import ApplicationError


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    autocomplete_fields = ["user"]

    def _can_manage(self, request, obj) -> bool:
        return obj is None or visibility.can_manage(request.user, obj)

    def has_add_permission(self, request, obj=None):
        return super().has_add_permission(request, obj) and obj is not None and self._can_manage(request, obj)

    def has_change_permission(self, request, obj=None):
        return super().has_change_permission(request, obj) and self._can_manage(request, obj)

    def has_delete_permission(self, request, obj=None):
        return super().has_delete_permission(request, obj) and self._can_manage(request, obj)


class TeamForm(forms.ModelForm):
    class Meta:
        model = Team
        fields = ["name", "display_name"]

    def clean_name(self):
        try:
            return services.team_check_name(self.cleaned_data.get("name", ""))
        except ApplicationError as exc:
            raise forms.ValidationError(exc.message) from None


@admin.register(Team)
class TeamAdmin(admin.ModelAdmin):
    form = TeamForm
    list_display = ["name", "display_name", "member_count", "created_at"]
    search_fields = ["name", "display_name"]
    inlines = [MembershipInline]

    def get_queryset(self, request):
        return visibility.teams(request.user)

    @admin.display(description="Members")
    def member_count(self, obj: Team) -> int:
        return obj.memberships.count()

    def has_add_permission(self, request):
        return request.user.is_superuser

    def has_delete_permission(self, request, obj=None):
        return request.user.is_superuser

    def has_change_permission(self, request, obj=None):
        if request.user.is_superuser:
            return True
        return obj is not None and visibility.can_manage(request.user, obj) and \
            request.user.has_perm("accounts.change_membership")

    def get_readonly_fields(self, request, obj=None):
        # A team's name is part of every model id its clients saved (ft:<base>:<team>:..., <team>/<name>:production).
        return ["name"] if obj is not None else []

    def save_model(self, request, obj, form, change):
        if change:
            super().save_model(request, obj, form, change)
            return
        # A new team goes through the service (only superusers create teams), like the API and the command.
        team = services.team_create(user=request.user, name=obj.name, display_name=obj.display_name)
        obj.pk, obj.created_at, obj.display_name = team.pk, team.created_at, team.display_name
        obj._state.adding = False

    def save_formset(self, request, form, formset, change):
        # Membership changes go through the service so that admin permissions follow the role.
        instances = formset.save(commit=False)
        for obj in formset.deleted_objects:
            services.membership_remove(team=obj.team, user=obj.user, actor=request.user)
        for inst in instances:
            services.membership_set(team=form.instance, user=inst.user, role=inst.role, actor=request.user)


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    list_display = ["user", "team", "role", "created_at"]
    list_filter = ["role", "team"]
    search_fields = ["user__username", "team__name"]
    list_select_related = ["user", "team"]
    autocomplete_fields = ["user"]

    def get_queryset(self, request):
        return visibility.visible_to(request.user, super().get_queryset(request))

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        if db_field.name == "team":
            kwargs["queryset"] = visibility.teams(request.user, manage=True)
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def has_change_permission(self, request, obj=None):
        ok = super().has_change_permission(request, obj)
        return ok and (obj is None or visibility.can_manage(request.user, obj.team))

    has_delete_permission = has_change_permission

    def save_model(self, request, obj, form, change):
        membership = services.membership_set(team=obj.team, user=obj.user, role=obj.role, actor=request.user)
        obj.pk = membership.pk

    def delete_model(self, request, obj):
        services.membership_remove(team=obj.team, user=obj.user, actor=request.user)


class ApiTokenCreateForm(forms.ModelForm):
    expires_days = forms.IntegerField(required=False, min_value=1, max_value=3650,
                                      help_text="Leave empty for a token that does not expire.")

    class Meta:
        model = ApiToken
        fields = ["user", "team", "name"]

    def clean(self):
        data = super().clean()
        user, team = data.get("user"), data.get("team")
        if user and team:
            try:
                services.api_token_check_owner(user=user, team=team)  # the service's rule, not a copy of it
            except ApplicationError as exc:
                raise forms.ValidationError(exc.message) from None
        return data


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = ["prefix_display", "name", "user", "team", "created_at", "expires_at", "last_used_at", "state"]
    list_filter = ["team"]
    list_select_related = ["user", "team"]
    search_fields = ["name", "prefix", "user__username"]
    readonly_fields = ["prefix", "created_at", "last_used_at", "revoked_at"]
    actions = ["revoke"]

    def get_queryset(self, request):
        return selectors.api_tokens_visible(request.user)

    def get_form(self, request, obj=None, **kwargs):
        if obj is None:
            kwargs["form"] = ApiTokenCreateForm
        return super().get_form(request, obj, **kwargs)

    def get_fields(self, request, obj=None):
        if obj is None:
            return ["user", "team", "name", "expires_days"]
        return ["user", "team", "name", "prefix", "created_at", "expires_at", "last_used_at", "revoked_at"]

    def get_readonly_fields(self, request, obj=None):
        return ["user", "team", *self.readonly_fields] if obj else []

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        if db_field.name == "team":
            kwargs["queryset"] = visibility.teams(request.user)
        if db_field.name == "user" and not request.user.is_superuser:
            from django.contrib.auth import get_user_model

            kwargs["queryset"] = get_user_model().objects.filter(pk=request.user.pk)
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    @admin.display(description="Token")
    def prefix_display(self, obj: ApiToken) -> str:
        return f"{obj.prefix}…"

    @admin.display(description="State")
    def state(self, obj: ApiToken) -> str:
        if obj.revoked_at:
            return "revoked"
        return "active" if obj.is_active else "expired"

    def save_model(self, request, obj, form, change):
        if change:
            if "name" in form.changed_data:
                services.api_token_rename(token=ApiToken.objects.get(pk=obj.pk), name=form.cleaned_data["name"],
                                          actor=request.user)
            return
        token, secret = services.api_token_create(user=form.cleaned_data["user"], team=form.cleaned_data["team"],
                                                  name=form.cleaned_data.get("name", ""),
                                                  expires_days=form.cleaned_data.get("expires_days"))
        obj.pk = token.pk
        self.message_user(request, format_html(
            "New token (copy it now, it is not shown again): <code id='new-token'>{}</code>", secret),
            level=messages.WARNING)

    @admin.action(description="Revoke selected tokens")
    def revoke(self, request, queryset):
        for token in queryset:
            services.api_token_revoke(token=token, actor=request.user)
        self.message_user(request, f"Revoked {queryset.count()} token(s).", level=messages.SUCCESS)
