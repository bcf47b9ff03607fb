"""LoRA Studio settings, read from the environment (see README "Configuration").

Defaults serve a laptop: SQLite and data under ``var/``. Production sets DJANGO_DEBUG=0, a strong
DJANGO_SECRET_KEY, DJANGO_ALLOWED_HOSTS and DATABASE_URL.
"""

from __future__ import annotations

from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

from config.env import env_bool, env_int, env_list, env_path, env_str, parse_cache_url, parse_database_url

BASE_DIR = Path(__file__).resolve().parent.parent

DEBUG = env_bool("DJANGO_DEBUG", True)
_DEV_KEY = "dev-insecure-key-change-me-in-production"
SECRET_KEY = env_str("DJANGO_SECRET_KEY", _DEV_KEY if DEBUG else "")
if not SECRET_KEY:
    raise ImproperlyConfigured("DJANGO_SECRET_KEY must be set when DJANGO_DEBUG=0")
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]", "testserver"])
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", [])

DATA_DIR = env_path("DATA_DIR", BASE_DIR / "var")
DATA_DIR.mkdir(parents=True, exist_ok=True)
# Extra folders scanned for base models and adapters, ':'-separated like PATH.
MODEL_DIRS = [Path(p).expanduser() for p in env_list("MODEL_DIRS", [], sep=":")]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    # Before staticfiles: `runserver` (make serve) serves static files through WhiteNoise too.
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django_q",
    # ninja's own templates and static Swagger UI: the API docs load from this server (no CDN), under our CSP.
    "ninja",
    "jobs",
    "accounts",
    "catalog",
    "datasets_app",
    "training",
    "classifier",
    "evaluation",
    "serving",
    "openai_compat",
    "notifications",
    "console",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Static files (the admin's CSS/JS) served by the app itself: no CDN, no separate web server needed.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "core.middleware.UploadLimitMiddleware",
    "core.middleware.ContentSecurityPolicyMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {
    "default": parse_database_url(
        env_str("DATABASE_URL", f"sqlite:///{DATA_DIR / 'db.sqlite3'}"), base_dir=BASE_DIR
    )
}
if DATABASES["default"]["ENGINE"].endswith("sqlite3") and DATABASES["default"]["NAME"] != ":memory:":
    # A file (not in-memory) test database, so that worker and child processes started by tests see it.
    DATABASES["default"]["TEST"] = {"NAME": str(Path(DATABASES["default"]["NAME"]).with_name("test-db.sqlite3"))}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = env_str("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = DATA_DIR / "static"
# Production serves what `manage.py collectstatic` put in STATIC_ROOT, compressed and with hashed names
# (cached forever by browsers); development serves the apps' folders directly.
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage" if DEBUG
                    else "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}
# Fixed at start-up from DJANGO_DEBUG (the test runner turns settings.DEBUG off on its own).
WHITENOISE_AUTOREFRESH = DEBUG
WHITENOISE_USE_FINDERS = DEBUG
# A missing manifest entry (collectstatic not run after an upgrade) serves the unhashed name instead of a 500.
WHITENOISE_MANIFEST_STRICT = False
LOGIN_URL = "admin:login"

# Uploads: keep large bodies on disk rather than in memory; the hard cap lives in datasets_app.
FILE_UPLOAD_MAX_MEMORY_SIZE = 2 * 1024 * 1024
DATA_UPLOAD_MAX_MEMORY_SIZE = 10 * 1024 * 1024
MAX_UPLOAD_BYTES = env_int("MAX_UPLOAD_BYTES", 512 * 1024 * 1024, minimum=1024)

# Security. Production (DEBUG off) gets the full set so `check --deploy` is clean.
SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_HTTPONLY = False
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
# Admin login throttling (accounts/throttle.py): failures per username / per address, and the lockout window.
LOGIN_FAILURE_LIMIT = env_int("LOGIN_FAILURE_LIMIT", 5, minimum=1)
LOGIN_FAILURE_LIMIT_PER_IP = env_int("LOGIN_FAILURE_LIMIT_PER_IP", 20, minimum=1)
LOGIN_LOCKOUT_SECONDS = env_int("LOGIN_LOCKOUT_SECONDS", 900, minimum=1)
if not DEBUG:
    SECURE_SSL_REDIRECT = env_bool("DJANGO_SECURE_SSL_REDIRECT", True)
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = env_int("DJANGO_HSTS_SECONDS", 31536000, minimum=0)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

# API tokens: prefix shown in listings, lifetime default (None: no expiry).
API_TOKEN_PREFIX = "lst_"

# Job queue (django-q2, ORM broker: the database is the only server required).
# `timeout` (seconds one task may run in the queue's own worker) stays below `retry` so the broker
# never re-delivers a task that is still running; `max_attempts=1` because retry and resume are
# ours, driven by checkpoints and our own rows, not by the queue.
TRAINING_QUEUE = env_str("TRAINING_QUEUE", "training")
Q_CLUSTER = {
    "name": TRAINING_QUEUE,
    "orm": "default",
    "workers": env_int("Q_WORKERS", 1, minimum=1),
    "recycle": 50,
    "timeout": env_int("Q_TIMEOUT", 7 * 24 * 3600, minimum=60),
    "retry": env_int("Q_TIMEOUT", 7 * 24 * 3600, minimum=60) + 3600,
    "max_attempts": 1,
    "ack_failures": True,
    "catch_up": False,
    "save_limit": 500,
    "poll": 1,
    "label": "Queue",
    # Cluster statistics (the dashboard's worker status) go to a file cache that every process of the host shares.
    "cache": "queue-stats",
}
CACHES = {
    # Rate limits and login throttling count here: the database by default, so every web process agrees.
    "default": parse_cache_url(env_str("CACHE_URL", "db")),
    "queue-stats": {"BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
                    "LOCATION": str(DATA_DIR / "cache" / "queue-stats")},
}

# Fairness: how many jobs of one team may run at once across all workers.
TEAM_MAX_RUNNING = env_int("TEAM_MAX_RUNNING", 1, minimum=1)
# This worker's identity in the Worker table and on the jobs it runs ("" = host:pid of each queue worker
# process), and its labels: a job whose requirements name labels runs only on a worker that has them all.
WORKER_NAME = env_str("WORKER_NAME", "")
WORKER_LABELS = env_list("WORKER_LABELS", [])

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}

# Training: device ("auto", "cpu", "cuda"), crash recovery and stale-heartbeat detection.
TRAINING_DEVICE = env_str("TRAINING_DEVICE", "auto")
TRAINING_MEMORY_LIMIT_BYTES = env_int("TRAINING_MEMORY_LIMIT_BYTES", 0, minimum=0) or None
# A TensorBoard serving DATA_DIR/runs (`tensorboard --logdir`), linked from each task page; empty: no link.
TENSORBOARD_URL = env_str("TENSORBOARD_URL", "").rstrip("/")
JOB_STALE_SECONDS = env_int("JOB_STALE_SECONDS", 90, minimum=10)
JOB_MAX_RECOVERIES = env_int("JOB_MAX_RECOVERIES", 2, minimum=0)
# The malloc a job's child runs on: "jemalloc" (preloaded when the host has it: Debian's libjemalloc2, which
# `make install` installs; less memory and faster CPU training than glibc's), "system", or a library's path.
JOB_CHILD_ALLOCATOR = env_str("JOB_CHILD_ALLOCATOR", "jemalloc")
# How long a job's child keeps retrying its database writes while the database restarts.
JOB_DB_RETRY_SECONDS = env_int("JOB_DB_RETRY_SECONDS", 300, minimum=0)

# Inference (/v1/chat/completions): models kept loaded per process and per-request bounds.
INFERENCE_MAX_BASES = env_int("INFERENCE_MAX_BASES", 1, minimum=1)
INFERENCE_MAX_ADAPTERS = env_int("INFERENCE_MAX_ADAPTERS", 4, minimum=1)
INFERENCE_MAX_NEW_TOKENS = env_int("INFERENCE_MAX_NEW_TOKENS", 1024, minimum=1)
INFERENCE_MAX_PROMPT_TOKENS = env_int("INFERENCE_MAX_PROMPT_TOKENS", 4096, minimum=16)
# Per team and minute on /v1/chat/completions (429 with Retry-After beyond them), counted in the default cache
# (CACHE_URL), which every web process shares.
INFERENCE_TEAM_REQUESTS_PER_MINUTE = env_int("INFERENCE_TEAM_REQUESTS_PER_MINUTE", 60, minimum=1)
INFERENCE_TEAM_TOKENS_PER_MINUTE = env_int("INFERENCE_TEAM_TOKENS_PER_MINUTE", 200_000, minimum=1)
# The model server (`manage.py serve_models`): the web process sends chat requests to SERVING_URL; empty runs the
# same engine inside the process (development and tests only: each web process would hold its own model).
SERVING_URL = env_str("SERVING_URL", "")
SERVING_HOST = env_str("SERVING_HOST", "127.0.0.1")
SERVING_PORT = env_int("SERVING_PORT", 8077, minimum=1)
# Sequences decoded together in one batch, and requests waiting for a place (beyond both: 429 with Retry-After).
SERVING_MAX_BATCH = env_int("SERVING_MAX_BATCH", 16, minimum=1)
SERVING_MAX_QUEUE = env_int("SERVING_MAX_QUEUE", 32, minimum=0)
SERVING_RETRY_AFTER_SECONDS = env_int("SERVING_RETRY_AFTER_SECONDS", 2, minimum=1)
# Loaded adapters of a base beyond these bytes are evicted, least recently used and idle first.
SERVING_ADAPTER_MEMORY_BYTES = env_int("SERVING_ADAPTER_MEMORY_BYTES", 512 * 1024 * 1024, minimum=1)
# torch's threads in the model server (0: torch's default, one per core). On a host whose cores are shared with
# other busy processes, 1 avoids OpenMP threads spinning against each other (6x slower decoding measured).
SERVING_TORCH_THREADS = env_int("SERVING_TORCH_THREADS", 0, minimum=0)
# A vLLM OpenAI-compatible server (started with --enable-lora) that serves chat instead of our model server.
VLLM_URL = env_str("VLLM_URL", "")
# Classifier predictions (/api/classifier/{adapter}/predict): texts per request.
CLASSIFIER_MAX_BATCH = env_int("CLASSIFIER_MAX_BATCH", 64, minimum=1)
# Classifier adapters kept loaded for predictions (an LRU; each is a small encoder plus its LoRA weights).
CLASSIFIER_CACHE_SIZE = env_int("CLASSIFIER_CACHE_SIZE", 4, minimum=1)
# Queue quota of one team: active (queued, running, paused) fine-tuning jobs; beyond it /v1/ answers 429.
TEAM_MAX_ACTIVE_JOBS = env_int("TEAM_MAX_ACTIVE_JOBS", 20, minimum=1)

# Dataset validation limits (a line longer, or JSON nested deeper, is a data error with its line number).
DATASET_MAX_LINE_BYTES = env_int("DATASET_MAX_LINE_BYTES", 1024 * 1024, minimum=1024)
DATASET_MAX_JSON_DEPTH = env_int("DATASET_MAX_JSON_DEPTH", 32, minimum=2)
# A plain .txt / .md corpus is cut into training rows of at most this many tokens, on paragraph boundaries.
DATASET_TEXT_CHUNK_TOKENS = env_int("DATASET_TEXT_CHUNK_TOKENS", 1024, minimum=16)

# Webhooks (notifications app): attempts per delivery, the first retry's delay (doubled each time, capped), the
# request timeout, and whether loopback receivers are allowed (only the tests' local receivers need them).
WEBHOOK_MAX_ATTEMPTS = env_int("WEBHOOK_MAX_ATTEMPTS", 6, minimum=1)
WEBHOOK_BACKOFF_SECONDS = env_int("WEBHOOK_BACKOFF_SECONDS", 30, minimum=1)
WEBHOOK_BACKOFF_MAX_SECONDS = env_int("WEBHOOK_BACKOFF_MAX_SECONDS", 3600, minimum=1)
WEBHOOK_TIMEOUT_SECONDS = env_int("WEBHOOK_TIMEOUT_SECONDS", 10, minimum=1)
# A pending delivery this late (its queue message was lost) is queued again by the periodic sweep.
WEBHOOK_SWEEP_SECONDS = env_int("WEBHOOK_SWEEP_SECONDS", 300, minimum=10)
WEBHOOK_ALLOW_LOOPBACK = env_bool("WEBHOOK_ALLOW_LOOPBACK", False)
