from __future__ import annotations

from accounts.commands import add_user_argument, command_actor
from accounts.models import Role
from accounts.services import member_add, team_get
from core.commands import ServiceCommand


class Command(ServiceCommand):
    help = "Give a user a role in a team (creating the user if missing) and admin access matching the role."

    def add_arguments(self, parser):
        parser.add_argument("team")
        parser.add_argument("username")
        parser.add_argument("--role", choices=Role.values, default=Role.MEMBER)
        parser.add_argument("--password", default=None,
                            help="Set this password (new users otherwise get an unusable password).")
        parser.add_argument("--email", default="")
        add_user_argument(parser, help_text="Act as this user (default: the team's first admin, else the first "
                                            "superuser); only team admins and superusers manage members.")

    def run(self, *args, **opts):
        team = team_get(opts["team"])
        actor = command_actor(username=opts["user"], team=team)
        user, membership, created = member_add(team_name=team.name, username=opts["username"], role=opts["role"],
                                               password=opts["password"], email=opts["email"], actor=actor)
        verb = "Created user" if created else "User"
        self.stdout.write(self.style.SUCCESS(
            f"{verb} {user.username} is now {membership.role} of team {membership.team.name}."))
