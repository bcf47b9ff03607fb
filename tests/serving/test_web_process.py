"""The web process serves /v1/ and the dataset pages without loading torch: serving.inference imports it only to load
a model; the one renderer and loader (``ml.data``, ``ml.model``) that the dataset preview and statistics use import it
only when a tokenizer is loaded."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROBE = ("import sys, django; django.setup(); import config.urls, serving.services, openai_compat.chat; "
         "import datasets_app.services, ml.data, ml.model, ml.templates, ml.probe; "
         "print(sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))")


def test_importing_the_urls_and_the_serving_and_dataset_services_loads_no_torch(tmp_path):
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings", "DATA_DIR": str(tmp_path),
           "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}"}
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"
