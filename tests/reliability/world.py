"""One of everything (or n of everything) a team owns, written straight to the database: datasets and
versions, base models, training tasks with events, checkpoints and adapters, adapter events, merges,
classifier tasks with events, evaluation runs with samples, reviews, pairs and votes, members, tokens."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from django.utils import timezone


@dataclass
class World:
    team: object
    owner: object
    encoder: object
    first: dict = field(default_factory=dict)  # kind -> the first object (the parent of growing child lists)


def _version(team, data_dir, name: str, number: int, records: int = 12):
    from datasets_app.models import Dataset, DatasetVersion

    dataset, _ = Dataset.objects.get_or_create(team=team, name=name, defaults={"format": "openai"})
    body = "".join(json.dumps({"messages": [{"role": "user", "content": f"{name} q{i} {number}"},
                                            {"role": "assistant", "content": f"a{i}"}]}) + "\n"
                   for i in range(records)).encode()
    sha = hashlib.sha256(body).hexdigest()
    rel = f"datasets/{team.name}/{sha}.jsonl"
    (data_dir / rel).parent.mkdir(parents=True, exist_ok=True)
    (data_dir / rel).write_bytes(body)
    return DatasetVersion.objects.create(dataset=dataset, number=number, sha256=sha, row_count=records, path=rel,
                                         format="openai", status="ready", source_filename=f"{name}.jsonl")


def grow(world: World, *, base_model, data_dir, n: int, offset: int = 0, adapter_path=None) -> World:
    """Add ``n`` of every kind of object to ``world.team`` (the first call also sets ``world.first``)."""
    from django.contrib.auth import get_user_model

    from accounts.services import api_token_create, membership_set, team_create
    from catalog.models import BaseModel
    from classifier.models import ClassifierEvent, ClassifierTask
    from evaluation.models import EvaluationRun, EvaluationSample, Review, ReviewPair, Vote
    from training.models import Adapter, AdapterEvent, Checkpoint, MergeJob, TrainingEvent, TrainingTask

    team, owner, now = world.team, world.owner, timezone.now()
    f = world.first
    for i in range(offset, offset + n):
        tag = f"{team.name}-{i}"
        version = _version(team, data_dir, f"ds-{tag}", 1)
        f.setdefault("version", version)
        f.setdefault("dataset", version.dataset)
        _version(team, data_dir, f["dataset"].name, f["dataset"].versions.count() + 1)
        BaseModel.objects.create(name=f"bm-{tag}", kind="causal-lm", path=str(data_dir / "none"), team=team)
        task = TrainingTask.objects.create(name=f"task-{tag}", team=team, created_by=owner, base_model=base_model,
                                           train_version=f["version"], status="succeeded", finished_at=now,
                                           suffix="s", queued_at=now, started_at=now)
        f.setdefault("task", task)
        adapter = Adapter.objects.create(name=f"ad-{tag}", team=team, created_by=owner, base_model=base_model,
                                         task=task, path=str(adapter_path or data_dir / "adapters" / tag))
        f.setdefault("adapter", adapter)
        TrainingEvent.objects.create(task=f["task"], message=f"event {i}", type="metrics", data={"step": i + 1})
        Checkpoint.objects.create(task=f["task"], step=i + 1, path=str(data_dir / "runs" / tag))
        AdapterEvent.objects.create(adapter=f["adapter"], actor=owner, action="promoted", from_stage="draft",
                                    to_stage="candidate")
        MergeJob.objects.create(name=f"merge-{tag}", team=team, created_by=owner, adapter=f["adapter"],
                                output_name=f"merged-{tag}", status="queued", queued_at=now)
        ctask = ClassifierTask.objects.create(name=f"clf-{tag}", team=team, created_by=owner, base_model=world.encoder,
                                              train_version=f["version"], status="queued", queued_at=now)
        f.setdefault("classifier", ctask)
        ClassifierEvent.objects.create(task=f["classifier"], message=f"event {i}")
        run = EvaluationRun.objects.create(name=f"eval-{tag}", team=team, created_by=owner, adapter=f["adapter"],
                                           dataset_version=f["version"], status="succeeded", finished_at=now)
        f.setdefault("run", run)
        EvaluationSample.objects.create(run=f["run"], index=i, prompt=f"p{i}", reference="r", base_answer="b",
                                        adapter_answer="a")
        review = Review.objects.create(run=f["run"], created_by=owner)
        f.setdefault("review", review)
        pair = ReviewPair.objects.create(review=f["review"], order=i, prompt=f"p{i}", answer_a="a", answer_b="b",
                                         adapter_side="a")
        Vote.objects.create(pair=pair, reviewer=owner, choice="a")
        member = get_user_model().objects.create_user(f"user-{tag}", password=None)
        membership_set(team=team, user=member, role="viewer")
        api_token_create(user=owner, team=team, name=f"token-{tag}")
        membership_set(team=team_create(name=f"t{i}-{team.name}"), user=owner, role="viewer")
    return world
