"""The permission matrix: every /api/ and /v1/ route, every admin changelist and change page, and the
commands that act for a user, against six roles: anonymous, viewer, member and admin of team alpha, the
admin of another team, and a superuser. Each answer must be exactly the allowed one.

Routes are enumerated from the NinjaAPI objects and models from the admin registry: a new endpoint or
admin without an entry here fails the test until someone decides who may use it.

Every request runs inside a savepoint that is rolled back, so one world serves all of them.
"""

from __future__ import annotations

import re

import pytest
from django.db import transaction
from django.test import Client

from tests.reliability.world import World, grow

pytestmark = pytest.mark.django_db

ROLES = ("anonymous", "viewer", "member", "admin", "other", "superuser")
OK = "ok"  # 2xx, or a refusal about the object's state or the parameters (400/409/422): the door let them in

# Who may do what: the expected answer for each role.
POLICIES = {
    "authenticated": dict(anonymous=401, viewer=OK, member=OK, admin=OK, other=OK, superuser=OK),
    "read": dict(anonymous=401, viewer=OK, member=OK, admin=OK, other=404, superuser=OK),
    "write": dict(anonymous=401, viewer=403, member=OK, admin=OK, other=404, superuser=OK),
    "manage": dict(anonymous=401, viewer=403, member=403, admin=OK, other=404, superuser=OK),
    "own_or_manage": dict(anonymous=401, viewer=404, member=404, admin=OK, other=404, superuser=OK),
    "superuser": dict(anonymous=401, viewer=403, member=403, admin=403, other=403, superuser=OK),
    "any_writer": dict(anonymous=401, viewer=403, member=OK, admin=OK, other=OK, superuser=OK),
    "team_members": dict(anonymous=401, viewer=OK, member=OK, admin=OK, other=404, superuser=404),
    "staff_docs": dict(anonymous=302, viewer=200, member=200, admin=200, other=200, superuser=200),
}

# "METHOD /prefix/path" (ninja's path syntax) -> (policy, JSON body or None). Path values are team alpha's objects.
API = {
    "GET /api/openapi.json": ("staff_docs", None),
    "GET /api/docs": ("staff_docs", None),
    "GET /api/me": ("authenticated", None),
    "GET /api/teams": ("authenticated", None),
    "POST /api/teams": ("superuser", {"name": "newteam"}),
    "GET /api/teams/{name}/members": ("read", None),
    "POST /api/teams/{name}/members": ("manage", {"username": "extra", "role": "member"}),
    "DELETE /api/teams/{name}/members/{username}": ("manage", None),
    "GET /api/tokens": ("authenticated", None),
    "POST /api/tokens": ("read", {"team": "alpha", "name": "t"}),
    "POST /api/tokens/{token_id}/revoke": ("own_or_manage", None),
    "POST /api/datasets": ("write", "upload"),
    "GET /api/datasets": ("authenticated", None),
    "GET /api/datasets/{ref}": ("read", None),
    "DELETE /api/datasets/{ref}": ("write", None),
    "GET /api/datasets/{ref}/versions": ("read", None),
    "GET /api/dataset-versions/{ref}": ("read", None),
    "DELETE /api/dataset-versions/{ref}": ("write", None),
    "GET /api/dataset-versions/{ref}/report": ("read", None),
    "GET /api/dataset-versions/{ref}/stats": ("read", None),
    "GET /api/dataset-versions/{ref}/histogram.png": ("read", None),
    "GET /api/dataset-versions/{ref}/preview": ("read", "?base_model=tiny-llama&n=1"),
    "GET /api/dataset-versions/{ref}/download": ("read", None),
    "POST /api/dataset-versions/{ref}/split": ("write", {"val_ratio": 0.25, "seed": 1}),
    "GET /api/base-models": ("authenticated", None),
    "POST /api/base-models/scan": ("any_writer", None),
    "GET /api/base-models/{ref}": ("read", None),
    "POST /api/training/tasks": ("write", "task"),
    "GET /api/training/tasks": ("authenticated", None),
    "GET /api/training/tasks/{ref}": ("read", None),
    "POST /api/training/tasks/{ref}/cancel": ("write", None),
    "POST /api/training/tasks/{ref}/pause": ("write", None),
    "POST /api/training/tasks/{ref}/resume": ("write", None),
    "POST /api/training/tasks/{ref}/retry": ("write", None),
    "POST /api/training/tasks/{ref}/clone": ("write", {"name": "clone"}),
    "GET /api/training/tasks/{ref}/events": ("read", None),
    "GET /api/training/tasks/{ref}/checkpoints": ("read", None),
    "GET /api/training/tasks/{ref}/recipe": ("read", None),
    "GET /api/adapters": ("authenticated", None),
    "GET /api/adapters/{ref}": ("read", None),
    "DELETE /api/adapters/{ref}": ("write", None),
    "POST /api/adapters/{ref}/promote": ("write", {"stage": "candidate"}),
    "POST /api/adapters/{ref}/approve": ("manage", {}),
    "POST /api/adapters/{ref}/archive": ("write", None),
    "POST /api/adapters/{ref}/restore": ("write", None),
    "GET /api/adapters/{ref}/download": ("read", None),
    "GET /api/adapters/{ref}/export": ("read", None),
    "GET /api/adapters/{ref}/ollama": ("read", None),
    "POST /api/adapters/{ref}/merge": ("write", {"output_name": "merged-x"}),
    "GET /api/adapters/{ref}/lineage": ("read", None),
    "GET /api/adapters/{ref}/events": ("read", None),
    "POST /api/adapters/{ref}/reproduce": ("write", {"name": "again"}),
    "GET /api/merges": ("authenticated", None),
    "GET /api/merges/{job_id}": ("read", None),
    "POST /api/classifier/tasks": ("write", "classifier"),
    "GET /api/classifier/tasks": ("authenticated", None),
    "GET /api/classifier/tasks/{ref}": ("read", None),
    "GET /api/classifier/tasks/{ref}/events": ("read", None),
    "POST /api/classifier/tasks/{ref}/cancel": ("write", None),
    "POST /api/classifier/tasks/{ref}/pause": ("write", None),
    "POST /api/classifier/tasks/{ref}/resume": ("write", None),
    "POST /api/classifier/tasks/{ref}/retry": ("write", None),
    "POST /api/classifier/{adapter_id}/predict": ("read", {"texts": ["hello"]}),
    "POST /api/evaluation/runs": ("write", "evaluation"),
    "GET /api/evaluation/runs": ("authenticated", None),
    "GET /api/evaluation/runs/{run_id}": ("read", None),
    "POST /api/evaluation/runs/{run_id}/cancel": ("write", None),
    "GET /api/evaluation/runs/{run_id}/samples": ("read", None),
    "POST /api/evaluation/runs/{run_id}/reviews": ("write", {}),
    "GET /api/evaluation/reviews": ("authenticated", None),
    "GET /api/evaluation/reviews/{review_id}": ("read", None),
    "GET /api/evaluation/reviews/{review_id}/pairs": ("read", None),
    # Blind votes are cast by the run's team members only: a superuser outside the team is not a reviewer.
    "POST /api/evaluation/reviews/{review_id}/pairs/{pair_id}/vote": ("team_members", {"choice": "b"}),
    "POST /api/evaluation/reviews/{review_id}/close": ("write", None),
    "POST /api/evaluation/reviews/{review_id}/preferences": ("write", {}),
    "GET /api/evaluation/reviews/{review_id}/results": ("read", None),
    "GET /api/serving/preference-pairs": ("authenticated", None),
    # Team alpha has no playground pairs in this world: a writer gets the 409 "no usable pairs".
    "POST /api/serving/preference-pairs/preferences": ("write", {"team": "alpha"}),
    "GET /api/evaluation/reviews/{review_id}/votes.csv": ("read", None),
    # Webhooks send a team's events to outside URLs: its admins manage them, every member reads them.
    "GET /api/webhooks/event-types": ("authenticated", None),
    "POST /api/webhooks/endpoints": ("manage", {"team": "alpha", "url": "http://127.0.0.1:9/hook",
                                                "events": ["job.failed"]}),
    "GET /api/webhooks/endpoints": ("authenticated", None),
    "GET /api/webhooks/endpoints/{endpoint_id}": ("read", None),
    "PATCH /api/webhooks/endpoints/{endpoint_id}": ("manage", {"description": "ops"}),
    "DELETE /api/webhooks/endpoints/{endpoint_id}": ("manage", None),
    "POST /api/webhooks/endpoints/{endpoint_id}/rotate-secret": ("manage", None),
    "GET /api/webhooks/endpoints/{endpoint_id}/deliveries": ("read", None),
    "GET /v1/openapi.json": ("staff_docs", None),
    "GET /v1/docs": ("staff_docs", None),
    "POST /v1/files": ("any_writer", "v1file"),  # a /v1/ token names its team: the upload goes there
    "GET /v1/files": ("authenticated", None),
    "GET /v1/files/{file_id}": ("read", None),
    "DELETE /v1/files/{file_id}": ("write", None),
    "GET /v1/files/{file_id}/content": ("read", None),
    "POST /v1/fine_tuning/jobs": ("write", "v1job"),
    "GET /v1/fine_tuning/jobs": ("authenticated", None),
    "GET /v1/fine_tuning/jobs/{fine_tuning_job_id}": ("read", None),
    "POST /v1/fine_tuning/jobs/{fine_tuning_job_id}/cancel": ("write", None),
    "POST /v1/fine_tuning/jobs/{fine_tuning_job_id}/pause": ("write", None),
    "POST /v1/fine_tuning/jobs/{fine_tuning_job_id}/resume": ("write", None),
    "GET /v1/fine_tuning/jobs/{fine_tuning_job_id}/events": ("read", None),
    "GET /v1/fine_tuning/jobs/{fine_tuning_job_id}/checkpoints": ("read", None),
    "GET /v1/models": ("authenticated", None),
    "GET /v1/models/{model_id}": ("read", None),
    "POST /v1/chat/completions": ("read", "chat"),
}


def routes() -> set[str]:
    """Every "METHOD /prefix/path" the two NinjaAPI objects serve."""
    from config.api import api, v1

    found = set()
    for prefix, ninja in (("/api", api), ("/v1", v1)):
        for path, router in ninja._routers:
            for route_path, view in router.path_operations.items():
                full = re.sub(r"/+", "/", f"{prefix}/{path}/{route_path}").rstrip("/")
                for op in view.operations:
                    for method in op.methods:
                        found.add(f"{method} {full}")
        found |= {f"GET {prefix}/openapi.json", f"GET {prefix}/docs"}
    return found


@pytest.fixture
def cast(make_team, make_user, tiny_base_model, data_dir, fast_passwords, token_for, django_user_model,
         tiny_adapter_dir):
    from accounts.models import ApiToken
    from catalog.models import BaseModel
    from notifications.models import WebhookDelivery, WebhookEndpoint
    from notifications.signing import generate_secret
    from training.models import MergeJob

    alpha, beta = make_team("alpha"), make_team("beta")
    users = {"viewer": make_user("viewer", alpha, "viewer"), "member": make_user("member", alpha, "member"),
             "admin": make_user("admin", alpha, "admin"), "other": make_user("other", beta, "admin"),
             "superuser": django_user_model.objects.create_superuser("root", password="x")}
    make_user("extra", alpha, "viewer")
    User = django_user_model
    encoder = BaseModel.objects.create(name="encoder", kind="encoder", path=str(data_dir / "enc"), team=alpha)
    # The member authored everything: the team admin may then approve (nobody approves their own adapter).
    world = grow(World(team=alpha, owner=users["member"], encoder=encoder), base_model=tiny_base_model,
                 data_dir=data_dir, n=1, adapter_path=tiny_adapter_dir)
    tokens = {role: token_for(u, alpha if role != "other" else beta) for role, u in users.items()}
    # A token of another alpha user: its owner and the team admin may revoke it, nobody else.
    token_for(User.objects.get(username="extra"), alpha)
    world.first["token"] = ApiToken.objects.get(user__username="extra")
    # Team alpha's own base model, so "read" of base-models/{ref} is a team object, not a global one.
    world.first["base"] = BaseModel.objects.filter(team=alpha, kind="causal-lm").first()
    world.first["merge"] = MergeJob.objects.filter(team=alpha).first()
    world.first["webhook"] = WebhookEndpoint.objects.create(team=alpha, url="http://127.0.0.1:9/hook",
                                                            events=["job.failed"], secret=generate_secret())
    world.first["delivery"] = WebhookDelivery.objects.create(endpoint=world.first["webhook"], message_id="msg_1",
                                                             event_id="evt_1", event_type="job.failed", body="{}")
    return world, users, tokens


def _values(world: World) -> dict:
    from serving.services import fine_tuned_model_name as fine_tuned_name

    f = world.first
    return {"name": "alpha", "username": "extra", "token_id": f["token"].pk, "job_id": f["merge"].pk,
            "adapter_id": f["adapter"].pk, "run_id": f["run"].pk, "review_id": f["review"].pk,
            "pair_id": f["review"].pairs.first().pk, "file_id": f"file-{f['version'].pk}",
            "fine_tuning_job_id": f"ftjob-{f['task'].pk}", "model_id": fine_tuned_name(f["task"]),
            "endpoint_id": f["webhook"].pk}


def _ref(route: str, world: World) -> str:
    f = world.first
    for prefix, key in (("/api/datasets/", "dataset"), ("/api/dataset-versions/", "version"),
                        ("/api/base-models/", "base"), ("/api/training/tasks/", "task"), ("/api/adapters/", "adapter"),
                        ("/api/classifier/tasks/", "classifier")):
        if route.split(" ", 1)[1].startswith(prefix):
            return str(f[key].pk)
    return ""


def _body(kind, world: World):
    f = world.first
    if kind == "task":
        return {"name": "new-task", "base_model": "tiny-llama", "train_version": f["version"].pk,
                "params": {"n_epochs": 1}}
    if kind == "classifier":
        return {"name": "new-clf", "base_model": world.encoder.name, "train_version": f["version"].pk}
    if kind == "evaluation":
        return {"adapter": str(f["adapter"].pk), "dataset": str(f["version"].pk), "metrics": ["perplexity"]}
    if kind == "v1job":
        return {"model": "tiny-llama", "training_file": f"file-{f['version'].pk}"}
    if kind == "chat":
        return {"model": _values(world)["model_id"], "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]}
    return kind


def _request(client: Client, method: str, url: str, body):
    import io

    if body == "upload" or body == "v1file":
        f = io.BytesIO(b"".join(b'{"messages":[{"role":"user","content":"q%d"},{"role":"assistant","content":"a"}]}\n'
                                % i for i in range(12)))
        f.name = "faq.jsonl"
        data = {"name": "faq", "team": "alpha", "file": f} if body == "upload" else {"purpose": "fine-tune", "file": f}
        return client.post(url, data)
    if isinstance(body, str) and body.startswith("?"):
        return client.generic(method, url + body)
    if body is None and method == "GET":
        return client.get(url)
    import json

    return client.generic(method, url, json.dumps(body if body is not None else {}), content_type="application/json")


def _verdict(status: int, expected) -> bool:
    if expected == OK:
        return 200 <= status < 300 or status in (400, 409, 422)
    return status == expected


def _clients(users, tokens, *, docs: bool = False, v1: bool = False) -> dict[str, Client]:
    clients = {}
    for role in ROLES:
        c = Client(raise_request_exception=False)
        if role == "anonymous":
            pass
        elif docs or (role == "superuser" and not v1):
            c.force_login(users[role])  # the superuser acts unnarrowed through a session; docs need a session
        else:
            c.defaults["HTTP_AUTHORIZATION"] = f"Bearer {tokens[role]}"
        clients[role] = c
    return clients


def test_every_api_route_has_a_matrix_entry():
    served = routes()
    assert not served - set(API), f"routes without a permission entry: {sorted(served - set(API))}"
    assert not set(API) - served, f"entries for routes that no longer exist: {sorted(set(API) - served)}"


def test_every_api_route_answers_each_role_exactly_as_allowed(cast, settings):
    from django.core.cache import cache

    settings.INFERENCE_MAX_NEW_TOKENS = 2
    cache.clear()
    world, users, tokens = cast
    values = _values(world)
    marker = world.first["task"].name
    wrong = []
    for route in sorted(routes() & set(API)):
        policy, body = API[route]
        method, path = route.split(" ", 1)
        url = path.replace("{ref}", _ref(route, world)).format(**values)
        clients = _clients(users, tokens, docs=policy == "staff_docs", v1=path.startswith("/v1/"))
        for role in ROLES:
            expected = POLICIES[policy][role]
            with transaction.atomic():
                response = _request(clients[role], method, url, _body(body, world))
                transaction.set_rollback(True)
            if not _verdict(response.status_code, expected):
                wrong.append(f"{route} as {role}: {response.status_code}, expected {expected}: "
                             f"{response.content[:160]!r}")
            elif policy == "authenticated" and role == "other" and marker.encode() in response.content:
                wrong.append(f"{route} as other: lists team alpha's {marker}")
    assert not wrong, "\n".join(wrong)


# ------------------------------------------------------------------------------------------------ admin


ADMIN_POLICIES = {
    # changelist answer per role, change page answer per role (other team's object: the admin redirects away)
    "team_scoped": (dict(anonymous=302, viewer=200, member=200, admin=200, other=200, superuser=200),
                    dict(anonymous=302, viewer=200, member=200, admin=200, other=302, superuser=200)),
    "superuser_only": (dict(anonymous=302, viewer=403, member=403, admin=403, other=403, superuser=200),
                       dict(anonymous=302, viewer=403, member=403, admin=403, other=403, superuser=200)),
    # Tokens in the admin: members and team admins manage theirs (admins: their team's); viewers have no page.
    "own_tokens": (dict(anonymous=302, viewer=403, member=200, admin=200, other=200, superuser=200),
                   dict(anonymous=302, viewer=403, member=302, admin=200, other=302, superuser=200)),
    "queue_view": (dict(anonymous=302, viewer=200, member=200, admin=200, other=200, superuser=200),
                   dict(anonymous=302, viewer=200, member=200, admin=200, other=200, superuser=200)),
}
ADMIN = {
    "auth.group": "superuser_only", "auth.user": "superuser_only",
    "django_q.schedule": "queue_view", "django_q.success": "queue_view", "django_q.failure": "queue_view",
    "django_q.ormq": "queue_view",
    "accounts.team": "team_scoped", "accounts.membership": "team_scoped", "accounts.apitoken": "own_tokens",
    "datasets_app.dataset": "team_scoped", "datasets_app.datasetversion": "team_scoped",
    "catalog.basemodel": "team_scoped", "training.trainingtask": "team_scoped", "training.adapter": "team_scoped",
    "training.mergejob": "team_scoped",
    "classifier.classifiertask": "team_scoped", "evaluation.evaluationrun": "team_scoped",
    "evaluation.review": "team_scoped", "serving.preferencepair": "team_scoped",
    "notifications.webhookendpoint": "team_scoped", "notifications.webhookdelivery": "team_scoped",
}


def _admin_object(model, world: World, users):
    """An object of team alpha (or, for global models, any object) to open the change page of."""
    from accounts.models import Membership

    label = model._meta.label_lower
    f = world.first
    by_label = {"accounts.team": world.team, "accounts.apitoken": f["token"],
                "accounts.membership": Membership.objects.filter(team=world.team).first(),
                "datasets_app.dataset": f["dataset"], "datasets_app.datasetversion": f["version"],
                "catalog.basemodel": f["base"], "training.trainingtask": f["task"],
                "training.adapter": f["adapter"], "classifier.classifiertask": f["classifier"],
                "training.mergejob": f["merge"],
                "evaluation.evaluationrun": f["run"], "evaluation.review": f["review"],
                "notifications.webhookendpoint": f["webhook"], "notifications.webhookdelivery": f["delivery"],
                "auth.user": users["viewer"]}
    if label in by_label:
        return by_label[label]
    return model.objects.first()


def test_every_admin_page_answers_each_role_exactly_as_allowed(cast):
    from django.contrib import admin
    from django.urls import reverse

    world, users, _tokens = cast
    from django.contrib.auth.models import Group

    Group.objects.get_or_create(name="Team viewers")
    registered = {m._meta.label_lower: m for m in admin.site._registry}
    assert not set(registered) - set(ADMIN), f"admin models without an entry: {sorted(set(registered) - set(ADMIN))}"
    wrong = []
    for label, model in sorted(registered.items()):
        lists, changes = ADMIN_POLICIES[ADMIN[label]]
        obj = _admin_object(model, world, users)
        info = (model._meta.app_label, model._meta.model_name)
        pages = [("changelist", reverse("admin:{}_{}_changelist".format(*info)), lists)]
        if obj is not None:
            pages.append(("change", reverse("admin:{}_{}_change".format(*info), args=[obj.pk]), changes))
        for role in ROLES:
            client = Client(raise_request_exception=False)
            if role != "anonymous":
                client.force_login(users[role])
            for kind, url, expected in pages:
                response = client.get(url)
                if response.status_code != expected[role]:
                    wrong.append(f"{label} {kind} as {role}: {response.status_code}, expected {expected[role]}")
                elif (kind == "changelist" and role == "other" and ADMIN[label] == "team_scoped"
                      and obj is not None and f"/{obj.pk}/change/" in response.content.decode()):
                    wrong.append(f"{label} changelist as other lists team alpha's object {obj.pk}")
    assert not wrong, "\n".join(wrong)


# ------------------------------------------------------------------------------------------------ commands


COMMANDS = {
    # command -> policy, as run with --user <role> (anonymous: no --user, the operator at the shell)
    "import_dataset": "write",
    "start_training": "write",
    "create_api_token": "read",
}


def _command_args(name: str, role: str, world: World, users, tmp_path) -> list[str]:
    user = [] if role == "anonymous" else ["--user", users[role].username]
    if name == "import_dataset":
        path = tmp_path / "faq.jsonl"
        line = '{"messages":[{"role":"user","content":"q%s"},{"role":"assistant","content":"a"}]}\n'
        path.write_text("".join(line.replace("%s", str(i)) for i in range(12)))
        return [str(path), "--name", "imported", "--team", "alpha", *user]
    if name == "start_training":
        return ["--name", "cmd-task", "--team", "alpha", "--base-model", "tiny-llama", "--dataset",
                str(world.first["version"].pk), *user]
    if name == "create_api_token":
        return [users["admin" if role == "anonymous" else role].username, "--team", "alpha"]
    raise AssertionError(name)


def test_commands_acting_for_a_user_respect_the_roles(cast, tmp_path):
    from django.core.management import call_command
    from django.core.management.base import CommandError

    world, users, _tokens = cast
    wrong = []
    for name, policy in COMMANDS.items():
        expected_for = dict(POLICIES[policy], anonymous=OK)
        for role in ROLES:
            expected = expected_for[role]
            with transaction.atomic():
                try:
                    call_command(name, *_command_args(name, role, world, users, tmp_path), stdout=_Null(),
                                 stderr=_Null())
                    outcome = OK
                except CommandError as exc:
                    text = str(exc).lower()
                    outcome = 403 if "read-only" in text or "permission" in text else 404
                transaction.set_rollback(True)
            if outcome != expected:
                wrong.append(f"{name} as {role}: {outcome}, expected {expected}")
    assert not wrong, "\n".join(wrong)


class _Null:
    def write(self, *_a):
        pass

    def flush(self):
        pass
