"""Refuse oversized request bodies from their Content-Length, before Django reads a byte of them."""

from __future__ import annotations

import json

from django.conf import settings
from django.http import HttpResponse

# Multipart framing and form fields around the file itself.
ENVELOPE_BYTES = 1024 * 1024


class UploadLimitMiddleware:
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
            if request.path.startswith("/v1/"):
                body = {"error": {"message": message, "type": "invalid_request_error", "param": "file",
                                  "code": "file_too_large"}}
            else:
                body = {"detail": message, "code": "file_too_large", "param": "file"}
            response = HttpResponse(json.dumps(body), status=413, content_type="application/json")
            response["Connection"] = "close"
            return response
        return self.get_response(request)
