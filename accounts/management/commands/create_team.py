from __future__ import annotations

from accounts.services import team_create
from core.commands import ServiceCommand


class Command(ServiceCommand):
    help = "Create a team."

    def add_arguments(self, parser):
        parser.add_argument("name", help="Short identifier: lowercase letters, digits, '-' or '_'.")
        parser.add_argument("--display-name", default="")

    def run(self, *args, **opts):
        team = team_create(name=opts["name"], display_name=opts["display_name"])
        self.stdout.write(self.style.SUCCESS(f"Created team {team.name} (id {team.pk})."))
