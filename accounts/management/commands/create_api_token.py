from __future__ import annotations

from django.contrib.auth import get_user_model

from accounts.services import api_token_create, team_get
from core.commands import ServiceCommand
from core.errors import NotFound


class Command(ServiceCommand):
    help = "Create an API token for a user in a team. The token is printed alone on the last line, once."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--team", required=True)
        parser.add_argument("--name", default="")
        parser.add_argument("--expires-days", type=int, default=None)

    def run(self, *args, **opts):
        User = get_user_model()
        try:
            user = User.objects.get(username=opts["username"])
        except User.DoesNotExist:
            raise NotFound(f"User {opts['username']!r} not found.", param="username") from None
        token, secret = api_token_create(user=user, team=team_get(opts["team"]), name=opts["name"],
                                         expires_days=opts["expires_days"])
        expiry = token.expires_at.isoformat() if token.expires_at else "never"
        self.stderr.write(f"Token {token.prefix}… for {user.username} in team {token.team.name}, expires {expiry}. "
                          "Store it now: it is not shown again.")
        self.stdout.write(secret)
