"""Parsing ``--param key=value`` options of the training and classifier commands."""

from __future__ import annotations

import json

from core.errors import ApplicationError


def parse_param_options(items: list[str] | None) -> dict:
    """``["n_epochs=3", "target_modules=[\\"q_proj\\"]", "lr_scheduler=cosine"]`` -> a dict.

    Values are read as JSON when they parse (numbers, booleans, lists), else kept as strings.
    """
    params: dict = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ApplicationError(f"--param {item!r}: expected key=value.", code="invalid_parameter", param=key or None)
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        params[key] = value
    return params
