"""The two NinjaAPI objects: /api/ (ours) and /v1/ (OpenAI-compatible). Errors are mapped here, once."""

from __future__ import annotations

from django.contrib.admin.views.decorators import staff_member_required
from django.http import HttpResponse
from ninja import NinjaAPI
from ninja.errors import AuthenticationError, HttpError
from ninja.errors import ValidationError as NinjaValidationError

from accounts.api import router as accounts_router
from accounts.auth import SessionPrincipalAuth, TokenAuth
from catalog.api import router as catalog_router
from classifier.api import router as classifier_router
from core.errors import ApplicationError, RateLimited
from datasets_app.api import router as datasets_router
from evaluation.api import router as evaluation_router
from notifications.api import router as notifications_router
from openai_compat.chat import router as chat_v1_router
from openai_compat.files import router as files_v1_router
from openai_compat.fine_tuning import router as fine_tuning_v1_router
from openai_compat.model_list import router as models_v1_router
from serving.api import router as serving_router
from training.api import router as training_router


def _loc_to_param(loc: list | tuple) -> str | None:
    # ninja reports e.g. ["body", "payload", "hyperparameters", "n_epochs"]; keep what the client sent.
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "query", "path", "form", "file", "header", "cookie"):
        parts = parts[1:]
    if parts and parts[0] in ("payload", "data", "filters"):
        parts = parts[1:]
    return ".".join(parts) or None


def _retry_after(exc: ApplicationError) -> dict | None:
    """A 429 says when a retry can succeed (``RateLimited.retry_after``: rate limits and queue quotas)."""
    if isinstance(exc, RateLimited):
        return {"Retry-After": str(exc.retry_after)}
    return {"Retry-After": "60"} if exc.status == 429 else None


def _with_headers(response: HttpResponse, headers: dict | None) -> HttpResponse:
    for key, value in (headers or {}).items():
        response[key] = value
    return response


def _validation_summary(errors: list[dict]) -> tuple[str, str | None]:
    first = errors[0] if errors else {}
    param = _loc_to_param(first.get("loc", ()))
    msg = first.get("msg", "Invalid request.")
    return (f"{param}: {msg}" if param else msg), param


api = NinjaAPI(
    title="LoRA Studio API",
    version="1.0",
    urls_namespace="api",
    auth=[TokenAuth(), SessionPrincipalAuth()],
    docs_decorator=staff_member_required,
    description="Datasets, base models, training and classifier tasks, adapters and evaluations of your teams. "
    "Authenticate with `Authorization: Bearer <token>` (manage.py create_api_token) or an admin session.",
)


@api.exception_handler(ApplicationError)
def _app_error(request, exc: ApplicationError):
    body = {"detail": exc.message, "code": exc.code, "param": exc.param}
    if isinstance(exc.details, list):
        body["errors"] = exc.details
    return _with_headers(api.create_response(request, body, status=exc.status), _retry_after(exc))


@api.exception_handler(NinjaValidationError)
def _validation_error(request, exc: NinjaValidationError):
    message, param = _validation_summary(exc.errors)
    errors = [{"param": _loc_to_param(e.get("loc", ())), "message": e.get("msg")} for e in exc.errors]
    return api.create_response(request, {"detail": message, "code": "validation_error", "param": param,
                                         "errors": errors}, status=400)


@api.exception_handler(AuthenticationError)
def _auth_error(request, exc):
    return api.create_response(request, {"detail": "Authentication required: send a valid bearer token or log in.",
                                         "code": "unauthenticated", "param": None}, status=401)


@api.exception_handler(HttpError)
def _http_error(request, exc: HttpError):
    return api.create_response(request, {"detail": str(exc), "code": "http_error", "param": None},
                               status=exc.status_code)


# ---------------------------------------------------------------------------------------------------------------
# /v1/: the OpenAI-compatible API. Same services, the OpenAI error shape.

OPENAI_ERROR_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 403: "invalid_request_error",
                      404: "invalid_request_error", 409: "invalid_request_error", 413: "invalid_request_error",
                      429: "rate_limit_error"}


def openai_error(request, status: int, message: str, *, code: str | None = None, param: str | None = None,
                 headers: dict | None = None) -> HttpResponse:
    body = {"error": {"message": message, "type": OPENAI_ERROR_TYPES.get(status, "server_error"),
                      "param": param, "code": code}}
    return _with_headers(v1.create_response(request, body, status=status), headers)


v1 = NinjaAPI(
    title="LoRA Studio OpenAI-compatible API",
    version="1.0",
    urls_namespace="v1",
    auth=TokenAuth(),
    docs_decorator=staff_member_required,
    description="The OpenAI fine-tuning, files, models and chat completions protocol on your team's hardware.",
)


@v1.exception_handler(ApplicationError)
def _v1_app_error(request, exc: ApplicationError):
    # Another team's object reads as missing; a read-only role is a 403; a 429 carries Retry-After.
    return openai_error(request, exc.status, exc.message, code=exc.code, param=exc.param, headers=_retry_after(exc))


@v1.exception_handler(NinjaValidationError)
def _v1_validation_error(request, exc: NinjaValidationError):
    message, param = _validation_summary(exc.errors)
    return openai_error(request, 400, message, code="invalid_request", param=param)


@v1.exception_handler(AuthenticationError)
def _v1_auth_error(request, exc):
    return openai_error(request, 401, "Invalid or missing API key. Send 'Authorization: Bearer <token>'.",
                        code="invalid_api_key")


@v1.exception_handler(HttpError)
def _v1_http_error(request, exc: HttpError):
    return openai_error(request, exc.status_code, str(exc))


api.add_router("/", accounts_router)
api.add_router("/", datasets_router)
api.add_router("/", catalog_router)
api.add_router("/", training_router)
api.add_router("/", classifier_router)
api.add_router("/", serving_router)
api.add_router("/", evaluation_router)
api.add_router("/", notifications_router)
v1.add_router("/", files_v1_router)
v1.add_router("/", fine_tuning_v1_router)
v1.add_router("/", models_v1_router)
v1.add_router("/", chat_v1_router)
