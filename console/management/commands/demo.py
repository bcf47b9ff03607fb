from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from tqdm import tqdm

from accounts.commands import command_actor
from accounts.models import Role, Team
from accounts.services import api_token_create, membership_set, team_create
from catalog.models import BaseModel
from catalog.services import base_models_scan
from classifier.services import classifier_predict, classifier_task_create
from core.commands import ServiceCommand, format_bytes, format_count, table
from datasets_app.models import DatasetVersion
from datasets_app.services import dataset_upload, style_dataset_build
from jobs.cli import wait_with_progress
from serving import inference
from training.services import training_task_create

DEMO_TEAM = "demo"
DEMO_USER = "admin"


def stop_worker(worker: subprocess.Popen) -> None:
    """Ask the demo's worker to stop; its job is over, so kill it if it takes long (it waits for idle loops)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(worker.pid, signal.SIGTERM)
    try:
        worker.wait(timeout=10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()


class Command(ServiceCommand):
    help = "Set up the demo team and admin user, register the bundled models and run the main job end to end."

    def add_arguments(self, parser):
        parser.add_argument("--password", default=os.environ.get("DEMO_PASSWORD"),
                            help="Admin password (default: a new random one, printed).")
        parser.add_argument("--skip-training", action="store_true", help="Only set up data and models.")

    def run(self, *args, **opts):
        out = self.stdout
        out.write(self.style.MIGRATE_HEADING("1. Team and admin user"))
        User = get_user_model()
        password = opts["password"] or secrets.token_urlsafe(12)
        # The demo's own superuser comes first: every later step acts as this real user (the commands' rule
        # in accounts.commands, which then finds it as the demo team's admin).
        admin_user = User.objects.filter(username=DEMO_USER).first()
        if admin_user is None:
            admin_user = User.objects.create_superuser(DEMO_USER, email="admin@example.com", password=password)
        else:
            admin_user.set_password(password)
            admin_user.is_superuser = admin_user.is_staff = True
            admin_user.save()
        user = command_actor(username=DEMO_USER)
        team = Team.objects.filter(name=DEMO_TEAM).first() or team_create(user=user, name=DEMO_TEAM,
                                                                          display_name="Demo team")
        membership_set(team=team, user=user, role=Role.ADMIN, actor=user)
        _token, secret = api_token_create(user=user, team=team, name="demo")
        out.write(f"   team {team.name}; login {DEMO_USER} / {password}")

        out.write(self.style.MIGRATE_HEADING("2. Base models (bundled packages, MODEL_DIRS, DATA_DIR/models)"))
        bar = tqdm(total=0, unit="model", file=self.stderr._out)

        def progress(name: str, index: int, total: int) -> None:
            bar.total, bar.n = total, index
            bar.set_description(f"scanning {name}" if name else "done")
            bar.refresh()

        try:
            report = base_models_scan(user=user, progress=progress)
        finally:
            bar.close()
        for row in report.rows:
            if row.action == "error":
                out.write(self.style.ERROR(f"   {row.name}: {row.message}"))
        rows = [[m.name, m.kind, format_count(m.parameter_count), format_bytes(m.size_bytes),
                 "yes" if m.available else "NO"] for m in BaseModel.objects.all()]
        out.write(table(rows, ["model", "kind", "params", "size", "available"]))
        missing = {"SmolLM2-135M-Instruct", "all-MiniLM-L6-v2"} - set(
            BaseModel.objects.filter(available=True).values_list("name", flat=True))
        if missing:
            raise SystemExit(f"Bundled models missing: {', '.join(sorted(missing))}")

        samples = self.load_samples(user, team)
        if not opts["skip_training"]:
            # One queue worker for both jobs; their truth is in our tables, so it is stopped when they are done.
            worker = subprocess.Popen([sys.executable, "manage.py", "qcluster"], cwd=settings.BASE_DIR,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
            try:
                adapter = self.train_and_compare(user, team, samples["customer-service"])
                self.train_classifier_and_classify(user, team, samples["questions"], samples["questions-held-out"])
            finally:
                stop_worker(worker)
            self.evaluate(user, adapter)

        out.write(self.style.MIGRATE_HEADING("Summary"))
        out.write(f"   data directory: {settings.DATA_DIR}")
        out.write(f"   database:       {settings.DATABASES['default']['NAME']}")
        out.write(f"   API token for {DEMO_USER} in team {team.name} (shown once):")
        out.write(f"   {secret}")
        out.write(self.style.SUCCESS(
            f"Done. Start the console with `make serve`, then open http://127.0.0.1:8000/admin/ "
            f"and log in as {DEMO_USER} / {password}"))

    # ------------------------------------------------------------------------------------------- samples

    def load_samples(self, user, team) -> dict:
        out = self.stdout
        out.write(self.style.MIGRATE_HEADING("3. Sample data (validated row by row, stored normalised)"))
        root = Path(settings.BASE_DIR) / "samples"
        files = [("customer-service", "customer_service_short.jsonl", None),
                 ("customer-service-long", "customer_service_alpaca.json", None),
                 ("support-sharegpt", "sharegpt_support.json", None),
                 ("support-chat", "chat_openai.jsonl", None),
                 ("questions", "question_classification_train.jsonl", None),
                 ("questions-held-out", "question_classification_val.jsonl", None)]
        versions: dict[str, DatasetVersion] = {}
        rows = []
        for name, filename, fmt in files:
            with (root / filename).open("rb") as fh:
                version = dataset_upload(user=user, team=team, name=name, fileobj=fh, filename=filename, format=fmt,
                                         base_model=None if name.startswith("questions") else "SmolLM2-135M-Instruct")
            versions[name] = version
            rows.append([version.ref, version.format, str(version.row_count), version.status,
                         str(version.report.get("warning_count", 0)) if isinstance(version.report, dict) else "0"])
        style = style_dataset_build(user=user, team=team, name="style-corpus", source_dir=root / "style_corpus",
                                    base_model="SmolLM2-135M-Instruct")
        for version in (style.train, style.validation):
            if version is not None:
                rows.append([version.ref, version.format, str(version.row_count), version.status, "0"])
        out.write(table(rows, ["version", "format", "rows", "status", "warnings"]))
        return versions

    # ------------------------------------------------------------------------------------------- training

    QUESTIONS = [
        "For how many years is my washing machine covered?",
        "I want to phone you. What number should I dial?",
        "从多少钱开始不收运费？",
    ]

    def train_and_compare(self, user, team, version):
        out = self.stdout
        out.write(self.style.MIGRATE_HEADING("4. Fine-tune SmolLM2-135M-Instruct on the customer-service set "
                                             "(auto parameters, through the queue worker)"))
        task = training_task_create(user=user, team=team, name="demo-customer-service",
                                    base_model="SmolLM2-135M-Instruct", train_version=version, params={})
        for key, why in (task.auto_explanation or {}).items():
            out.write(f"   auto {key}: {why}")
        task = wait_with_progress(task, self.stderr._out)
        if task.status != "succeeded":
            raise SystemExit(f"Training {task.status}: {task.error_code} {task.error_message}")
        adapter = task.adapters.get()
        out.write(f"   adapter {adapter.name}: {adapter.path}")
        out.write(f"   {task.trained_tokens:,} tokens trained in {task.duration_seconds:.0f}s on {task.device}; "
                  f"final loss {task.metrics.get('train_loss', float('nan')):.3f}")

        out.write(self.style.MIGRATE_HEADING("5. Before and after (greedy decoding, paraphrased questions)"))
        base_path = task.base_model.path
        for question in self.QUESTIONS:
            req = inference.GenerationRequest(messages=[{"role": "user", "content": question}], max_new_tokens=80)
            before = inference.generate(base_path, None, None, req).text.strip()
            after = inference.generate(base_path, f"adapter-{adapter.pk}", adapter.path, req).text.strip()
            out.write(f"   Q: {question}")
            out.write(f"      base:    {before}")
            out.write(f"      adapter: {after}")
        return adapter

    CLASSIFY = [
        "Hive 表怎么按天分区？",
        "Why is my Spark job stuck in the queue?",
        "你好，今天过得怎么样？",
        "Thanks, have a nice evening!",
        "红烧鱼怎么做？",
        "Which football team won the league this year?",
    ]

    def train_classifier_and_classify(self, user, team, train, held_out) -> None:
        out = self.stdout
        out.write(self.style.MIGRATE_HEADING("6. Train a question classifier: all-MiniLM-L6-v2 + LoRA (default "
                                             "parameters, through the queue worker)"))
        task = classifier_task_create(user=user, team=team, name="demo-questions", base_model="all-MiniLM-L6-v2",
                                      train_version=train, validation_version=held_out, params={})
        task = wait_with_progress(task, self.stderr._out)
        if task.status != "succeeded":
            raise SystemExit(f"Classifier training {task.status}: {task.error_code} {task.error_message}")
        report = task.report
        out.write(f"   {task.trainable_parameters:,} trainable parameters (LoRA + head) of "
                  f"{task.total_parameters:,}; {task.duration_seconds:.0f}s on {task.device}")
        out.write(f"   held-out ({held_out.row_count} questions): accuracy {report['accuracy']:.3f}, "
                  f"macro-F1 {report['macro_f1']:.3f} (best epoch {report.get('best_epoch')} of "
                  f"{len(report.get('epochs', []))})")
        predictions = classifier_predict(user=user, adapter=task.adapter, texts=self.CLASSIFY)
        rows = [[text, p["label"], f"{p['confidence']:.2f}"] for text, p in zip(self.CLASSIFY, predictions, strict=True)]
        out.write(table(rows, ["question", "label", "confidence"]))

    def evaluate(self, user, adapter) -> None:
        out = self.stdout
        out.write(self.style.MIGRATE_HEADING("7. Evaluation report of the demo adapter (perplexity before/after, "
                                             "samples)"))
        call_command("evaluate", adapter.name, "--metrics", "perplexity,samples", "--samples", "2",
                     "--max-new-tokens", "48", "--foreground", "--user", user.username, stdout=self.stdout,
                     stderr=self.stderr)
