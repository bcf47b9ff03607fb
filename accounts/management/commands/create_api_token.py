from __future__ import annotations

from accounts.commands import command_actor
from accounts.services import api_token_create, team_get
from core.commands import ServiceCommand


class Command(ServiceCommand):
    help = "Create an API token for a user in a team. The token is printed alone on the last line, once."

    def add_arguments(self, parser):
        parser.add_argument("username", help="The token's owner (it acts as this user, narrowed to --team).")
        parser.add_argument("--team", required=True)
        parser.add_argument("--name", default="")
        parser.add_argument("--expires-days", type=int, default=None)

    def run(self, *args, **opts):
        team = team_get(opts["team"])
        # The token's owner is the one who acts: the same lookup (and errors) as every command's --user.
        user = command_actor(username=opts["username"], team=team)
        token, secret = api_token_create(user=user, team=team, name=opts["name"], expires_days=opts["expires_days"])
        expiry = token.expires_at.isoformat() if token.expires_at else "never"
        self.stderr.write(f"Token {token.prefix}… for {user.username} in team {token.team.name}, expires {expiry}. "
                          "Store it now: it is not shown again.")
        self.stdout.write(secret)
