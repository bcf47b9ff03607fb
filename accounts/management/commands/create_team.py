from __future__ import annotations

from accounts.commands import add_user_argument, command_actor
from accounts.services import team_create
from core.commands import ServiceCommand


class Command(ServiceCommand):
    help = "Create a team (acting as a superuser: only superusers create teams)."

    def add_arguments(self, parser):
        parser.add_argument("name", help="Short identifier: lowercase letters, digits, '-' or '_'.")
        parser.add_argument("--display-name", default="")
        add_user_argument(parser, help_text="Act as this user (default: the first superuser).")

    def run(self, *args, **opts):
        actor = command_actor(username=opts["user"], team=None)
        team = team_create(user=actor, name=opts["name"], display_name=opts["display_name"])
        self.stdout.write(self.style.SUCCESS(f"Created team {team.name} (id {team.pk})."))
