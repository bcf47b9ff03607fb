from __future__ import annotations

from accounts.models import Role
from accounts.services import member_add
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

    def run(self, *args, **opts):
        user, membership, created = member_add(team_name=opts["team"], username=opts["username"], role=opts["role"],
                                               password=opts["password"], email=opts["email"])
        verb = "Created user" if created else "User"
        self.stdout.write(self.style.SUCCESS(
            f"{verb} {user.username} is now {membership.role} of team {membership.team.name}."))
