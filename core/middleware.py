"""Request-level guards: oversized or compressed bodies are refused before Django reads a byte of them,
and every HTML page gets a Content Security Policy with a per-request script nonce."""

from __future__ import annotations

import json
import secrets

from django.conf import settings
from django.http import HttpResponse

# Multipart framing and form fields around the file itself.
ENVELOPE_BYTES = 1024 * 1024


def _refusal(request, status: int, message: str, code: str, param: str | None) -> HttpResponse:
    if request.path.startswith("/v1/"):
        body = {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}}
    else:
        body = {"detail": message, "code": code, "param": param}
    # No "Connection: close": a WSGI application must not send hop-by-hop headers (PEP 3333; runserver's
    # wsgiref asserts on it and answered 500). The server decides what to do with the unread body.
    response = HttpResponse(json.dumps(body), status=status, content_type="application/json")
    # Answered before CommonMiddleware would add it: without a length the client cannot tell where the
    # answer ends while the server still waits for (and discards) the body it refused.
    response["Content-Length"] = str(len(response.content))
    return response


class UploadLimitMiddleware:
    """413 from Content-Length over MAX_UPLOAD_BYTES; 415 for a compressed request body.

    Django never decodes ``Content-Encoding``: a gzip or deflate body would reach the parsers as binary
    noise, and decompressing it here would open the door to decompression bombs, so it is refused.
    """

    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request):
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        limit = settings.MAX_UPLOAD_BYTES + ENVELOPE_BYTES
        if length > limit:
            message = (f"The request body is {length} bytes; the largest upload accepted is "
                       f"{settings.MAX_UPLOAD_BYTES} bytes (MAX_UPLOAD_BYTES).")
            return _refusal(request, 413, message, "file_too_large", "file")
        encoding = request.META.get("HTTP_CONTENT_ENCODING", "").strip().lower()
        if encoding and encoding != "identity":
            message = (f"Compressed request bodies (Content-Encoding: {encoding[:40]}) are not accepted; "
                       "send the file uncompressed.")
            return _refusal(request, 415, message, "unsupported_content_encoding", None)
        return self.get_response(request)


# The admin and our templates load scripts from our own static files; the few inline scripts of our
# templates carry ``nonce="{{ request.csp_nonce }}"``. Styles stay 'unsafe-inline': the admin and our
# templates use style attributes, and CSS cannot run code.
CSP_TEMPLATE = ("default-src 'self'; script-src 'self' 'nonce-{nonce}'; style-src 'self' 'unsafe-inline'; "
                "img-src 'self' data:; font-src 'self' data:; connect-src 'self'; object-src 'none'; "
                "base-uri 'self'; form-action 'self'; frame-ancestors 'none'")


class ContentSecurityPolicyMiddleware:
    """Sets ``Content-Security-Policy`` on HTML responses (admin pages, API docs) with a fresh nonce."""

    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request):
        request.csp_nonce = secrets.token_urlsafe(16)
        response = self.get_response(request)
        if "text/html" in response.get("Content-Type", "") and "Content-Security-Policy" not in response:
            response["Content-Security-Policy"] = CSP_TEMPLATE.format(nonce=request.csp_nonce)
        return response
