from __future__ import annotations

import os
import secrets

from django.conf import settings
from django.contrib.auth import get_user_model
from tqdm import tqdm

from accounts.models import Role, Team
from accounts.services import api_token_create, membership_set, team_create
from core.commands import ServiceCommand, format_bytes, format_count, table
from training.models import BaseModel
from training.services import base_models_scan

DEMO_TEAM = "demo"
DEMO_USER = "admin"


class Command(ServiceCommand):
    help = "Set up the demo team and admin user, register the bundled models and run the main job end to end."

    def add_arguments(self, parser):
        parser.add_argument("--password", default=os.environ.get("DEMO_PASSWORD"),
                            help="Admin password (default: a new random one, printed).")

    def run(self, *args, **opts):
        out = self.stdout
        out.write(self.style.MIGRATE_HEADING("1. Team and admin user"))
        team = Team.objects.filter(name=DEMO_TEAM).first() or team_create(name=DEMO_TEAM, display_name="Demo team")
        User = get_user_model()
        password = opts["password"] or secrets.token_urlsafe(12)
        user = User.objects.filter(username=DEMO_USER).first()
        if user is None:
            user = User.objects.create_superuser(DEMO_USER, email="admin@example.com", password=password)
        else:
            user.set_password(password)
            user.is_superuser = user.is_staff = True
            user.save()
        membership_set(team=team, user=user, role=Role.ADMIN)
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

        out.write(self.style.MIGRATE_HEADING("Summary"))
        out.write(f"   data directory: {settings.DATA_DIR}")
        out.write(f"   database:       {settings.DATABASES['default']['NAME']}")
        out.write(f"   API token for {DEMO_USER} in team {team.name} (shown once):")
        out.write(f"   {secret}")
        out.write(self.style.SUCCESS(
            f"Done. Start the console with `make serve`, then open http://127.0.0.1:8000/admin/ "
            f"and log in as {DEMO_USER} / {password}"))
