"""Typed readers for environment variables.

Each helper fails loudly (ImproperlyConfigured) on a value it cannot parse, so a typo in a
deployment's environment stops the process at start-up instead of surfacing as odd behaviour.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlparse

from django.core.exceptions import ImproperlyConfigured

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def env_str(name: str, default: str) -> str:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean (1/0, true/false), got {raw!r}")


def env_int(name: str, default: int, *, minimum: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be an integer, got {raw!r}") from None
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"{name} must be >= {minimum}, got {value}")
    return value


def env_list(name: str, default: list[str], *, sep: str = ",") -> list[str]:
    raw = os.environ.get(name)
    if raw is None:
        return list(default)
    return [item.strip() for item in raw.split(sep) if item.strip()]


def env_path(name: str, default: Path) -> Path:
    raw = os.environ.get(name)
    return Path(raw).expanduser().resolve() if raw else default


def parse_database_url(url: str, *, base_dir: Path) -> dict:
    """Turn ``sqlite:///path`` or ``mysql://user:pass@host:port/name?opt=v`` into a DATABASES entry.

    Written here rather than pulled from dj-database-url because we also need the MySQL-specific
    options (utf8mb4, strict mode) applied consistently, and it is twenty lines.
    """
    parsed = urlparse(url)
    scheme = parsed.scheme
    if scheme == "sqlite":
        # sqlite:///relative/path or sqlite:////absolute/path
        raw_path = unquote(parsed.path[1:]) if parsed.path.startswith("/") else unquote(parsed.path)
        if raw_path in ("", ":memory:"):
            name: str | Path = ":memory:"
        else:
            path = Path(raw_path)
            name = path if path.is_absolute() else base_dir / path
        return {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": str(name),
            # WAL + a busy timeout let the web process and the worker write concurrently.
            "OPTIONS": {
                "timeout": 30,
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
                "transaction_mode": "IMMEDIATE",
            },
        }
    if scheme in ("mysql", "mariadb"):
        options = dict(parse_qsl(parsed.query))
        db_name = unquote(parsed.path.lstrip("/"))
        if not db_name:
            raise ImproperlyConfigured("DATABASE_URL for MySQL must name a database: mysql://user@host/name")
        return {
            "ENGINE": "django.db.backends.mysql",
            "NAME": db_name,
            "USER": unquote(parsed.username or ""),
            "PASSWORD": unquote(parsed.password or ""),
            "HOST": parsed.hostname or "127.0.0.1",
            "PORT": str(parsed.port or 3306),
            "CONN_MAX_AGE": int(options.pop("conn_max_age", 60)),
            "CONN_HEALTH_CHECKS": True,
            "OPTIONS": {
                "charset": "utf8mb4",
                "init_command": "SET sql_mode='STRICT_TRANS_TABLES,NO_ZERO_IN_DATE,NO_ZERO_DATE,"
                "ERROR_FOR_DIVISION_BY_ZERO,NO_ENGINE_SUBSTITUTION'",
                "isolation_level": "read committed",
                **options,
            },
            "TEST": {"CHARSET": "utf8mb4", "COLLATION": "utf8mb4_unicode_ci"},
        }
    raise ImproperlyConfigured(f"DATABASE_URL scheme {scheme!r} is not supported (use sqlite:// or mysql://)")


CACHE_TABLE = "lora_studio_cache"


def parse_cache_url(url: str) -> dict:
    """The default cache from ``CACHE_URL``: ``db`` (a table in the database: every process of every host
    shares it, nothing more to run), ``redis://host:6379/0`` (faster under load), or ``locmem`` (one process
    only). Rate limits and login throttling count in it, so several web processes agree only on a shared one."""
    parsed = urlparse(url)
    scheme = parsed.scheme or url
    if scheme == "db":
        return {"BACKEND": "django.core.cache.backends.db.DatabaseCache", "LOCATION": CACHE_TABLE}
    if scheme in ("redis", "rediss"):
        return {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": url}
    if scheme == "locmem":
        return {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}
    raise ImproperlyConfigured(f"CACHE_URL {url!r} is not supported (use db, redis://host:port/db or locmem)")
