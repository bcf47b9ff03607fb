"""Serving a model: which model a name means, and chat completions with their bounds and rate limits.

Every door that serves a model (``/v1/``, the admin, commands) calls these, so the rules hold once:

- **Names.** A base model by name; ``ft:<base>:<team>:<suffix>:<task id>`` (the adapter of a succeeded
  fine-tuning job); ``<ft name>:ckpt-step-N`` (one of its checkpoints); ``<team>/<model name>:production``
  (the adapter in production under that name now); ``adapter:<team>/<adapter name>`` (any ready adapter, trained
  or scanned). Another team's model reads as missing.
- **Where it runs.** The model server (``serving.client``; ``manage.py serve_models``) decodes every request,
  batched with the others; the web process holds no model.
- **Bounds of one request.** ``max_tokens`` up to ``INFERENCE_MAX_NEW_TOKENS``; the prompt (rendered with the
  base model's chat template) up to ``INFERENCE_MAX_PROMPT_TOKENS`` and, with ``max_tokens``, within the
  model's context; at most four stop sequences. Broken bounds are 400s and are never counted.
- **Rate limits per team and minute.** ``INFERENCE_TEAM_REQUESTS_PER_MINUTE`` requests and
  ``INFERENCE_TEAM_TOKENS_PER_MINUTE`` tokens (prompt + ``max_tokens``, counted when the request is admitted);
  beyond them a ``RateLimited`` (429 with Retry-After).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.db.models import QuerySet

from accounts.models import Team
from accounts.visibility import Actor, acting_user, as_principal, resolve_team, visible_to
from catalog.models import BaseModel
from catalog.services import base_model_get, base_model_list
from core.errors import ApplicationError, NotFound, RateLimited
from core.ratelimit import consume
from datasets_app.models import DatasetVersion
from datasets_app.services import preference_version_create
from serving import vllm
from serving.client import engine_count_prompt_tokens, engine_generate_stream
from serving.inference import GenerationRequest, GenerationResult
from serving.models import PreferencePair
from training.models import Adapter, Checkpoint, TrainingTask
from training.services import preference_task_create, training_task_list

PRODUCTION_REF_RE = re.compile(r"^(?P<team>[^/:\s]+)/(?P<name>[^/:\s]+):production$")
ADAPTER_REF_RE = re.compile(r"^adapter:(?P<team>[^/:\s]+)/(?P<name>.+)$")
CHECKPOINT_PART_RE = re.compile(r"^ckpt-step-(?P<step>\d+)$")
ROLES = ("system", "user", "assistant", "tool")
MAX_STOP_SEQUENCES = 4
DEFAULT_MAX_TOKENS = 256


# ---------------------------------------------------------------------------------------------- names

def fine_tuned_model_name(task: TrainingTask) -> str:
    """The model a fine-tuning job produces, as clients name it: ``ft:<base>:<team>:<suffix>:<task id>``."""
    return f"ft:{task.base_model.name}:{task.team.name}:{task.suffix}:{task.pk}"


def checkpoint_model_name(task: TrainingTask, step: int) -> str:
    return f"{fine_tuned_model_name(task)}:ckpt-step-{step}"


def adapter_model_name(adapter: Adapter) -> str:
    """Any ready adapter of a team, trained here or found by ``scan_models``: ``adapter:<team>/<adapter name>``
    (adapter names are unique per team, so the id is stable for the adapter's life)."""
    return f"adapter:{adapter.team.name}/{adapter.name}"


@dataclass(frozen=True)
class ResolvedModel:
    """What a model name points to: a base folder, and an adapter folder with its cache key (None: the base)."""

    name: str
    base: BaseModel
    adapter_path: str | None = None
    key: str | None = None
    team: Team | None = None  # the owner; None for a global base model
    created: datetime | None = None

    @property
    def owner(self) -> str:
        return self.team.name if self.team is not None else "system"


@dataclass(frozen=True)
class ServedModel:
    """One entry of the model list."""

    id: str
    created: datetime | None
    owned_by: str


def _not_found(name: str) -> NotFound:
    return NotFound(f"The model {name!r} does not exist or you do not have access to it.", code="model_not_found",
                    param="model")


def _succeeded_tasks(user: Actor) -> QuerySet[TrainingTask]:
    return training_task_list(user=user, status=TrainingTask.Status.SUCCEEDED).order_by("-pk")


def _production_adapters(user: Actor) -> QuerySet[Adapter]:
    return visible_to(user, Adapter.objects.select_related("team", "base_model")).filter(
        stage=Adapter.Stage.PRODUCTION, status=Adapter.Status.READY, files_deleted_at__isnull=True,
        kind=Adapter.Kind.CAUSAL_LM)


def _ready_adapters(user: Actor) -> QuerySet[Adapter]:
    return visible_to(user, Adapter.objects.select_related("team", "base_model")).filter(
        status=Adapter.Status.READY, files_deleted_at__isnull=True, kind=Adapter.Kind.CAUSAL_LM)


def chat_model_resolve(*, user: Actor, name: str) -> ResolvedModel:
    """The model ``name`` means for ``user`` (see the module docstring), or NotFound (``param="model"``)."""
    name = name or ""
    by_adapter = ADAPTER_REF_RE.match(name)
    if by_adapter:
        adapter = _ready_adapters(user).filter(team__name=by_adapter["team"], name=by_adapter["name"]).first()
        if adapter is None:
            raise _not_found(name)
        return ResolvedModel(name, adapter.base_model, adapter.path, f"adapter-{adapter.pk}", adapter.team,
                             adapter.created_at)
    production = PRODUCTION_REF_RE.match(name)
    if production:
        adapter = _production_adapters(user).filter(team__name=production["team"],
                                                    model_name=production["name"]).first()
        if adapter is None:
            raise NotFound(f"No adapter of {production['team']}/{production['name']} is in production (or you "
                           "cannot see it).", code="model_not_found", param="model")
        return ResolvedModel(name, adapter.base_model, adapter.path, f"adapter-{adapter.pk}", adapter.team,
                             adapter.stage_changed_at or adapter.created_at)
    if not name.startswith("ft:"):
        try:
            base = base_model_get(user=user, ref=name, kind=BaseModel.Kind.CAUSAL_LM)
        except ApplicationError:
            raise _not_found(name) from None
        return ResolvedModel(name, base, team=base.team, created=base.created_at)
    parts = name.split(":")
    step = None
    if len(parts) == 6 and CHECKPOINT_PART_RE.match(parts[5]):
        step = int(CHECKPOINT_PART_RE.match(parts[5])["step"])
        parts = parts[:5]
    if len(parts) != 5 or not parts[4].isdigit():
        raise _not_found(name)
    task = _succeeded_tasks(user).filter(pk=int(parts[4])).first()
    if task is None or fine_tuned_model_name(task) != ":".join(parts):
        raise _not_found(name)
    if step is None:
        adapter = task.adapters.filter(status=Adapter.Status.READY).first()
        if adapter is None:
            raise _not_found(name)
        return ResolvedModel(name, task.base_model, adapter.path, f"adapter-{adapter.pk}", task.team,
                             task.finished_at)
    ckpt = Checkpoint.objects.filter(task=task, step=step).first()
    if ckpt is None:
        raise _not_found(name)
    return ResolvedModel(name, task.base_model, ckpt.path, f"ckpt-{ckpt.pk}", task.team, ckpt.created_at)


def chat_model_list(*, user: Actor) -> list[ServedModel]:
    """Every name ``user`` can chat with: available base models, fine-tuned models with their checkpoints, and
    the production names of the teams."""
    rows = [ServedModel(m.name, m.created_at, m.team.name if m.team_id else "system")
            for m in base_model_list(user=user, kind=BaseModel.Kind.CAUSAL_LM, available=True).select_related("team")]
    for task in _succeeded_tasks(user).prefetch_related("checkpoints"):
        rows.append(ServedModel(fine_tuned_model_name(task), task.finished_at, task.team.name))
        rows.extend(ServedModel(checkpoint_model_name(task, c.step), c.created_at, task.team.name)
                    for c in task.checkpoints.all())
    rows.extend(ServedModel(a.serving_name, a.stage_changed_at or a.created_at, a.team.name)
                for a in _production_adapters(user).order_by("team__name", "model_name"))
    rows.extend(ServedModel(adapter_model_name(a), a.created_at, a.team.name)
                for a in _ready_adapters(user).order_by("team__name", "name"))
    return rows


# ---------------------------------------------------------------------------------------------- completions

def _require_files(resolved: ResolvedModel) -> None:
    """A clear 404 instead of a loader traceback (500) when the folders vanished from disk."""
    missing = not (Path(resolved.base.path) / "config.json").is_file() or (
        resolved.adapter_path is not None and not (Path(resolved.adapter_path) / "adapter_config.json").is_file())
    if missing:
        raise NotFound(f"The files of model {resolved.name!r} are missing on this server; ask an admin to restore "
                       "or rescan them.", code="model_files_missing", param="model")


def _messages(messages: list[dict]) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise ApplicationError("messages must be a non-empty list.", code="invalid_messages", param="messages")
    cleaned = []
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        content = message.get("content") if isinstance(message, dict) else None
        if role not in ROLES:
            raise ApplicationError(f"messages[{i}].role must be one of {', '.join(ROLES)}.",
                                   code="invalid_messages", param="messages")
        if content is not None and not isinstance(content, str):
            raise ApplicationError(f"messages[{i}].content must be text.", code="invalid_messages",
                                   param="messages")
        cleaned.append({"role": role, "content": content or ""})
    return cleaned


def _request(messages: list[dict], *, max_tokens: int | None, temperature: float | None, top_p: float | None,
             seed: int | None, stop: str | list[str] | None) -> GenerationRequest:
    limit = settings.INFERENCE_MAX_NEW_TOKENS
    wanted = min(DEFAULT_MAX_TOKENS, limit) if max_tokens is None else max_tokens
    if isinstance(wanted, bool) or not isinstance(wanted, int) or wanted < 1:
        raise ApplicationError("max_tokens must be a positive integer.", code="invalid_parameter",
                               param="max_tokens")
    if wanted > limit:
        raise ApplicationError(f"max_tokens is {wanted}; this server allows at most {limit}.",
                               code="max_tokens_too_large", param="max_tokens")
    temperature = 0.0 if temperature is None else temperature
    if not 0 <= temperature <= 2:
        raise ApplicationError("temperature must be from 0 to 2.", code="invalid_parameter", param="temperature")
    top_p = 1.0 if top_p is None else top_p
    if not 0 < top_p <= 1:
        raise ApplicationError("top_p must be above 0 and at most 1.", code="invalid_parameter", param="top_p")
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if len(stops) > MAX_STOP_SEQUENCES:
        raise ApplicationError(f"stop: at most {MAX_STOP_SEQUENCES} sequences.", code="invalid_stop", param="stop")
    return GenerationRequest(messages=_messages(messages), max_new_tokens=wanted, temperature=temperature,
                             top_p=top_p, seed=seed, stop=[s for s in stops if s])


def _vllm_model(resolved: ResolvedModel) -> str:
    """vLLM's name for the resolved model, its adapter registered there first (see ``serving.vllm``)."""
    if resolved.key is not None:
        vllm.vllm_adapter_ensure(lora_name=resolved.key, lora_path=resolved.adapter_path)
    return vllm.vllm_model_name(base_name=resolved.base.name, lora_name=resolved.key)


def _pieces(resolved: ResolvedModel, req: GenerationRequest) -> Iterator[str | GenerationResult]:
    """Submit to the engine (our model server, or vLLM when ``VLLM_URL`` is set)."""
    if settings.VLLM_URL:
        return vllm.vllm_generate_stream(model=_vllm_model(resolved), request=req)
    return engine_generate_stream(base_path=resolved.base.path, adapter_key=resolved.key,
                                  adapter_path=resolved.adapter_path, request=req)


def _check_prompt(resolved: ResolvedModel, req: GenerationRequest) -> int:
    limit = settings.INFERENCE_MAX_PROMPT_TOKENS
    if settings.VLLM_URL:
        n = vllm.vllm_count_prompt_tokens(model=_vllm_model(resolved), messages=req.messages)
    else:
        n = engine_count_prompt_tokens(base_path=resolved.base.path, adapter_path=resolved.adapter_path,
                                       messages=req.messages)
    context = resolved.base.max_position_embeddings or limit
    if n > limit or n + req.max_new_tokens > context:
        raise ApplicationError(f"The prompt has {n} tokens; with max_tokens={req.max_new_tokens} it exceeds the "
                               f"limit ({min(limit, context)} tokens).", code="context_length_exceeded",
                               param="messages")
    return n


def _rate_team(user: Actor, resolved: ResolvedModel) -> Team:
    """The team a request is charged to: the API token's, else the model's owner, else the user's only team."""
    return as_principal(user).team or resolved.team or resolve_team(user, None, write=False)


def _check_team_rate(team: Team, tokens: int) -> None:
    requests = settings.INFERENCE_TEAM_REQUESTS_PER_MINUTE
    token_limit = settings.INFERENCE_TEAM_TOKENS_PER_MINUTE
    over = consume(f"chat-requests:{team.pk}", 1, limit=requests)
    if over is not None:
        raise RateLimited(f"Team {team.name!r} sent {over.used} chat requests this minute (limit {requests}); "
                          f"retry in {over.retry_after}s.", retry_after=over.retry_after)
    over = consume(f"chat-tokens:{team.pk}", tokens, limit=token_limit)
    if over is not None:
        raise RateLimited(f"Team {team.name!r} used {over.used} of its {token_limit} tokens this minute and this "
                          f"request needs {tokens}; retry in {over.retry_after}s.", retry_after=over.retry_after,
                          code="tokens_rate_limit_exceeded")


def _admit(user: Actor, model: str, messages: list[dict], **options) -> tuple[ResolvedModel, GenerationRequest]:
    """Resolve, bound and charge one request (in that order: a refused request is never counted)."""
    resolved = chat_model_resolve(user=user, name=model)
    _require_files(resolved)
    req = _request(messages, **options)
    prompt_tokens = _check_prompt(resolved, req)
    _check_team_rate(_rate_team(user, resolved), prompt_tokens + req.max_new_tokens)
    return resolved, req


def chat_completion_create(*, user: Actor, model: str, messages: list[dict], max_tokens: int | None = None,
                           temperature: float | None = None, top_p: float | None = None, seed: int | None = None,
                           stop: str | list[str] | None = None) -> GenerationResult:
    """One completion of ``messages`` (``[{"role": ..., "content": "text"}]``) by the model named ``model``."""
    resolved, req = _admit(user, model, messages, max_tokens=max_tokens, temperature=temperature, top_p=top_p,
                           seed=seed, stop=stop)
    pieces = []
    for piece in _pieces(resolved, req):
        if isinstance(piece, GenerationResult):
            piece.text = "".join(pieces)
            return piece
        pieces.append(piece)
    raise ApplicationError("The model server ended without a result.", code="model_server_unavailable", status=503)


def chat_completion_stream(*, user: Actor, model: str, messages: list[dict], max_tokens: int | None = None,
                           temperature: float | None = None, top_p: float | None = None, seed: int | None = None,
                           stop: str | list[str] | None = None) -> Iterator[str | GenerationResult]:
    """Like ``chat_completion_create``, streamed: text pieces, then one ``GenerationResult`` (usage, finish).

    Resolution, bounds, rate limits and the model server's queue are checked when this is called (so they can
    still be an HTTP error); the tokens come while the iterator is consumed, and closing it early stops the
    decoding.
    """
    resolved, req = _admit(user, model, messages, max_tokens=max_tokens, temperature=temperature, top_p=top_p,
                           seed=seed, stop=stop)
    return _pieces(resolved, req)


# ---------------------------------------------------------------------------------------------- preferences

FINISH_REASONS = ("stop", "length")


def _finish_reason(value: str | None, param: str) -> str:
    if value in (None, ""):
        return ""
    if value not in FINISH_REASONS:
        raise ApplicationError(f"{param} must be one of {', '.join(FINISH_REASONS)}.", code="invalid_parameter",
                               param=param)
    return value


def preference_pair_create(*, user: Actor, messages: list[dict], chosen_model: str, chosen: str,
                           rejected_model: str, rejected: str, params: dict | None = None, tie: bool = False,
                           chosen_finish_reason: str | None = None,
                           rejected_finish_reason: str | None = None) -> PreferencePair:
    """Store "``chosen`` is better than ``rejected``" for ``messages`` (with ``tie``: neither is); both models must be
    the user's to chat with. The finish reasons (``stop``, ``length``) tell later whether an answer was cut off.

    The pair belongs to the team of the adapter judged (the first team-owned model of the two), else to the
    user's only writable team.
    """
    cleaned = _messages(messages)
    if not any(m["role"] == "user" for m in cleaned):
        raise ApplicationError("The conversation needs a user turn.", code="invalid_messages", param="messages")
    if chosen_model == rejected_model and chosen == rejected:
        raise ApplicationError("The two answers are the same.", code="invalid_pair", param="chosen")
    reasons = (_finish_reason(chosen_finish_reason, "chosen_finish_reason"),
               _finish_reason(rejected_finish_reason, "rejected_finish_reason"))
    owners = [chat_model_resolve(user=user, name=n).team for n in (chosen_model, rejected_model)]
    team = resolve_team(user, next((t for t in owners if t is not None), None), write=True)
    return PreferencePair.objects.create(team=team, created_by=acting_user(user), messages=cleaned,
                                         chosen_model=chosen_model, chosen=chosen, rejected_model=rejected_model,
                                         rejected=rejected, params=params or {}, tie=bool(tie),
                                         chosen_finish_reason=reasons[0], rejected_finish_reason=reasons[1])


def preference_pair_list(*, user: Actor, team: Team | str | int | None = None) -> QuerySet[PreferencePair]:
    """The preference pairs ``user`` can read, newest first (one team's when ``team`` is given)."""
    pairs = visible_to(user, PreferencePair.objects.select_related("team", "created_by"))
    if team is not None:
        pairs = pairs.filter(team=resolve_team(user, team, write=False))
    return pairs


# ---------------------------------------------------------------------------------------------- pairs -> DPO

def _pairs_of(user: Actor, team: Team | str | int | None, pairs) -> tuple[Team, list[PreferencePair]]:
    """The team (one, writable) and its pairs: ``pairs`` ids or a queryset, else every pair of the team."""
    if pairs is not None and not isinstance(pairs, QuerySet):
        try:
            ids = sorted({int(p) for p in pairs})
        except (TypeError, ValueError):
            raise ApplicationError("pairs must be a list of preference pair ids.", code="invalid_parameter",
                                   param="pairs") from None
        if not ids:
            raise ApplicationError("pairs is empty: give pair ids, or leave it out for every pair of the team.",
                                   code="invalid_parameter", param="pairs")
        found = preference_pair_list(user=user).filter(pk__in=[i for i in ids if 0 < i < 2**63])
        missing = sorted(set(ids) - {p.pk for p in found})
        if missing:
            raise NotFound(f"Preference pair(s) {', '.join(map(str, missing[:10]))} not found.",
                           code="preference_pair_not_found", param="pairs")
        pairs = found
    if pairs is not None:
        teams = set(Team.objects.filter(pk__in=pairs.values("team_id")))
        if len(teams) > 1:
            raise ApplicationError("The pairs belong to several teams (" + ", ".join(sorted(t.name for t in teams))
                                   + "): build one team's set at a time.", code="invalid_parameter", param="pairs")
        if team is None and teams:
            team = teams.pop()
    team = resolve_team(user, team, write=True)
    chosen = list((pairs if pairs is not None else preference_pair_list(user=user)).filter(team=team)
                  .select_related("team", "created_by").order_by("created_at", "pk"))
    return team, chosen


def preference_pair_rows(*, pairs: list[PreferencePair]) -> tuple[list[dict], list[dict], dict]:
    """(rows, their lineage, counts): each judged pair a row, the conversation as the prompt, the preferred answer
    chosen and the other rejected; ties, pairs with an empty or cut-off answer (``incomplete``) and pairs whose two
    answers are the same text are left out and counted."""
    rows: list[dict] = []
    lineage: list[dict] = []
    counts = {"pairs": len(pairs), "used": 0, "ties_left_out": 0, "incomplete_left_out": 0, "identical_left_out": 0}
    for pair in pairs:
        if pair.tie:
            counts["ties_left_out"] += 1
            continue
        if not pair.is_complete:
            counts["incomplete_left_out"] += 1
            continue
        if pair.chosen.strip() == pair.rejected.strip():
            counts["identical_left_out"] += 1
            continue
        rows.append({"prompt": pair.messages, "chosen": [{"role": "assistant", "content": pair.chosen}],
                     "rejected": [{"role": "assistant", "content": pair.rejected}]})
        lineage.append({"row": len(rows), "pair": pair.pk, "chosen_model": pair.chosen_model,
                        "rejected_model": pair.rejected_model,
                        "chosen_by": pair.created_by.get_username() if pair.created_by else None,
                        "chosen_at": pair.created_at.isoformat(), "prompt": pair.prompt})
    counts["used"] = len(rows)
    return rows, lineage, counts


def _left_out(counts: dict) -> str:
    parts = [f"{counts[k]} {w}" for k, w in (("ties_left_out", "tie(s)"), ("incomplete_left_out", "incomplete"),
                                             ("identical_left_out", "with identical answers")) if counts[k]]
    return ", ".join(parts) or "none left out"


def preference_pair_version_create(*, user: Actor, team: Team | str | int | None = None, pairs=None,
                                   name: str | None = None) -> DatasetVersion:
    """A preference dataset version built from the playground's pairs of one team (``pairs``: ids or a queryset;
    default every pair of the team), through the same builder as a review's votes, with its lineage on the version
    (``report["lineage"]``: each row's pair, its two models, who chose and when)."""
    team, chosen = _pairs_of(user, team, pairs)
    rows, lineage, counts = preference_pair_rows(pairs=chosen)
    models: dict[str, dict[str, int]] = {}
    for entry in lineage:
        for side in ("chosen", "rejected"):
            tally = models.setdefault(entry[f"{side}_model"], {"chosen": 0, "rejected": 0})
            tally[side] += 1
    if not chosen:
        found = f"Team {team.name!r} has no preference pairs (mark answers in the chat playground)"
    else:
        found = f"{len(rows)} of the {len(chosen)} pairs of team {team.name!r} are usable ({_left_out(counts)})"
    return preference_version_create(
        user=user, team=team, name=name or "playground-preferences", rows=rows,
        filename="playground-pairs.jsonl",
        description=f"Preference pairs marked in the chat playground ({len(rows)} of {len(chosen)} pairs).",
        lineage={"source": "playground", "team": team.name, "models": models, "counts": counts, "pairs": lineage},
        too_few=found, param="pairs")


def _adapter_key(user: Actor, name: str) -> str | None:
    """The cache key of the adapter ``name`` means for ``user`` (None: a base model, a checkpoint, or gone)."""
    try:
        key = chat_model_resolve(user=user, name=name).key
    except NotFound:
        return None
    return key if key and key.startswith("adapter-") else None


def preference_pair_task_create(*, user: Actor, version: DatasetVersion, train: str = "adapter",
                                name: str | None = None, params: dict | None = None,
                                method: str = "dpo") -> TrainingTask:
    """Queue a preference task (DPO by default) on a version built from playground pairs. ``train`` is a model
    name the user can chat with (an adapter is trained further, a base model gets a fresh adapter), or
    ``"adapter"``: the one adapter the pairs judged (refused, naming them, when there are several or none)."""
    lineage = (version.report or {}).get("lineage") or {}
    if lineage.get("source") != "playground":
        raise ApplicationError(f"Dataset version {version.ref} was not built from playground pairs.",
                               code="invalid_parameter", param="dataset")
    train = (train or "").strip()
    if not train:
        raise ApplicationError("train must be 'adapter' or a model name.", code="invalid_parameter", param="train")
    if train == "adapter":
        by_key: dict[str, str] = {}
        for model in sorted(lineage.get("models") or {}):
            key = _adapter_key(user, model)
            if key is not None:
                by_key.setdefault(key, model)  # two names of one adapter (ft:..., adapter:...) are one adapter
        judged = sorted(by_key.values())
        if len(judged) != 1:
            raise ApplicationError(
                ("The pairs judged several adapters (" + ", ".join(judged) + ")" if judged
                 else "The pairs judged no adapter") + ": name the model to train (train=<model name>).",
                code="invalid_parameter", param="train")
        train = judged[0]
    try:
        resolved = chat_model_resolve(user=user, name=train)
    except NotFound:
        raise NotFound(f"The model {train!r} does not exist or you do not have access to it.",
                       code="model_not_found", param="train") from None
    start = None
    if resolved.key is not None:
        if not resolved.key.startswith("adapter-"):
            raise ApplicationError(f"{train!r} is a checkpoint; train an adapter or a base model.",
                                   code="invalid_parameter", param="train")
        start = Adapter.objects.select_related("base_model").get(pk=int(resolved.key.removeprefix("adapter-")))
    label = start.name if start else resolved.base.name
    return preference_task_create(user=user, version=version, base_model=resolved.base, start_adapter=start,
                                  name=name or f"{label}-{method}-playground-v{version.number}", params=params,
                                  method=method, metadata={"trained": train})


def preference_pair_dataset_create(*, user: Actor, team: Team | str | int | None = None, pairs=None,
                                   name: str | None = None, train: str | None = None, params: dict | None = None,
                                   ) -> tuple[DatasetVersion, TrainingTask | None]:
    """The playground's feedback loop in one action: the team's pairs -> a preference version (-> a DPO task)."""
    with transaction.atomic():
        version = preference_pair_version_create(user=user, team=team, pairs=pairs, name=name)
        task = preference_pair_task_create(user=user, version=version, train=train, params=params) if train \
            else None
    return version, task
