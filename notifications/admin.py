"""Admin pages of the webhooks: endpoints (the secret shown once, in a message), and every delivery with the log
of its attempts (status code, error, duration)."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.utils.html import format_html

from accounts import visibility
from accounts.admin_base import TeamScopedAdmin, VisibleTeamFilter
from core.errors import ApplicationError
from notifications import services
from notifications.events import EVENT_TYPES
from notifications.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint
from notifications.targets import webhook_url_check


class EndpointForm(forms.ModelForm):
    # Checked by the webhook rule (http or https, not this server), not by the stock URL field.
    url = forms.CharField(max_length=2000, help_text="http(s) URL of your receiver.")
    events = forms.MultipleChoiceField(choices=[(name, f"{name}: {text}") for name, text in EVENT_TYPES.items()],
                                       widget=forms.CheckboxSelectMultiple)

    class Meta:
        model = WebhookEndpoint
        fields = ["team", "url", "description", "events", "is_active"]

    def __init__(self, *args, user=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.user = user

    def clean_url(self) -> str:
        try:
            return webhook_url_check(self.cleaned_data["url"])
        except ApplicationError as exc:
            raise forms.ValidationError(exc.message, code=exc.code) from None

    def clean_team(self):
        team = self.cleaned_data["team"]
        if self.user is not None and team is not None and not visibility.can_manage(self.user, team):
            raise forms.ValidationError("Only the team's admins manage its webhooks.")
        return team


def _show_secret(admin_obj, request, endpoint: WebhookEndpoint, secret: str) -> None:
    admin_obj.message_user(request, format_html(
        "Signing secret of {} (copy it now, it is not shown again): <code id='webhook-secret'>{}</code>",
        endpoint.url, secret), level=messages.WARNING)


@admin.register(WebhookEndpoint)
class WebhookEndpointAdmin(TeamScopedAdmin):
    form = EndpointForm
    list_display = ["url", "team", "events_col", "is_active", "secret_hint", "deliveries_col", "created_at"]
    list_filter = [VisibleTeamFilter, "is_active"]
    list_select_related = ["team"]
    search_fields = ["url", "description", "team__name"]
    readonly_fields = ["secret_hint", "created_by", "created_at", "secret_rotated_at"]
    actions = ["rotate_secrets", "deactivate"]

    def get_form(self, request, obj=None, change=False, **kwargs):
        form = super().get_form(request, obj, change=change, **kwargs)

        class WithUser(form):
            def __init__(self, *args, **kw):
                super().__init__(*args, user=request.user, **kw)

        return WithUser

    @admin.display(description="Events")
    def events_col(self, obj: WebhookEndpoint) -> str:
        return ", ".join(obj.events or [])

    @admin.display(description="Secret")
    def secret_hint(self, obj: WebhookEndpoint) -> str:
        return obj.secret_hint

    @admin.display(description="Deliveries")
    def deliveries_col(self, obj: WebhookEndpoint) -> str:
        url = f"../webhookdelivery/?endpoint__id__exact={obj.pk}"
        return format_html('<a href="{}">deliveries</a>', url)

    def save_model(self, request, obj, form, change):
        data = form.cleaned_data
        if change:
            services.webhook_endpoint_update(user=request.user, endpoint=obj, url=data["url"], events=data["events"],
                                             description=data.get("description", ""), is_active=data["is_active"])
            return
        endpoint, secret = services.webhook_endpoint_create(user=request.user, team=data["team"], url=data["url"],
                                                            events=data["events"],
                                                            description=data.get("description", ""))
        obj.pk = endpoint.pk
        _show_secret(self, request, endpoint, secret)

    @admin.action(description="Rotate the signing secret of the selected endpoints")
    def rotate_secrets(self, request, queryset):
        for endpoint in queryset:
            result = self.call_service(request, services.webhook_endpoint_rotate_secret, user=request.user,
                                       endpoint=endpoint)
            if result is not None:
                _show_secret(self, request, *result)

    @admin.action(description="Deactivate the selected endpoints")
    def deactivate(self, request, queryset):
        done = sum(1 for endpoint in queryset if self.call_service(
            request, services.webhook_endpoint_update, user=request.user, endpoint=endpoint, is_active=False))
        self.message_user(request, f"Deactivated {done} endpoint(s).", level=messages.SUCCESS)


class AttemptInline(admin.TabularInline):
    model = WebhookAttempt
    extra = 0
    can_delete = False
    max_num = 0
    fields = ["number", "started_at", "status_code", "error", "duration_ms", "response_excerpt"]
    readonly_fields = fields


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(TeamScopedAdmin):
    team_field = "endpoint__team"
    list_display = ["event_type", "endpoint", "status", "attempts", "last_status_code", "last_error_col",
                    "next_attempt_at", "created_at"]
    list_filter = ["status", "event_type"]
    list_select_related = ["endpoint"]
    search_fields = ["event_id", "message_id", "event_type", "endpoint__url"]
    readonly_fields = ["endpoint", "message_id", "event_id", "event_type", "body", "status", "attempts",
                       "next_attempt_at", "last_status_code", "last_error", "created_at", "delivered_at"]
    fields = readonly_fields
    inlines = [AttemptInline]
    actions = ["redeliver"]

    def has_add_permission(self, request):
        return False

    @admin.display(description="Last error")
    def last_error_col(self, obj: WebhookDelivery) -> str:
        return obj.last_error[:80]

    @admin.action(description="Deliver the selected events again")
    def redeliver(self, request, queryset):
        done = sum(1 for delivery in queryset if self.call_service(
            request, services.webhook_delivery_redeliver, user=request.user, delivery=delivery) is not None)
        self.message_user(request, f"Queued {done} redelivery(ies).", level=messages.SUCCESS)
