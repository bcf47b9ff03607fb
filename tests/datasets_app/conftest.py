"""Fixtures for the dataset tests: teams and users, a tiny real tokenizer, file builders."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from dataset_helpers import CHAT_TEMPLATE


@pytest.fixture
def data_dir(settings, tmp_path) -> Path:
    path = tmp_path / "data"
    path.mkdir()
    settings.DATA_DIR = path
    return path


@pytest.fixture
def teams(db):
    from accounts.services import team_create

    return team_create(name="alpha"), team_create(name="beta")


@pytest.fixture
def users(teams):
    """alice: member of alpha; bob: member of beta; vera: viewer of alpha."""
    from accounts.services import member_add

    alice, _m, _c = member_add(team_name="alpha", username="alice", role="member")
    bob, _m, _c = member_add(team_name="beta", username="bob", role="member")
    vera, _m, _c = member_add(team_name="alpha", username="vera", role="viewer")
    return {"alice": alice, "bob": bob, "vera": vera}


@pytest.fixture
def upload(data_dir, teams, users):
    """upload(content_bytes, name="faq", team="alpha", user=alice, filename="data.jsonl", **kw) -> version."""
    from datasets_app import services

    def do(content: bytes, *, name: str = "faq", team: str = "alpha", user=None, filename: str = "data.jsonl",
           **kwargs):
        return services.dataset_upload(user=user or users["alice"], team=team, name=name,
                                       fileobj=io.BytesIO(content), filename=filename, **kwargs)

    return do


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory) -> Path:
    """A real (fast) tokenizer trained in a few milliseconds, with a ChatML chat template."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(),
        pre_tokenizers.Split(Regex(r"\w+|[^\w\s]"), behavior="isolated"),
    ])
    trainer = trainers.WordLevelTrainer(special_tokens=["<unk>", "<|im_start|>", "<|im_end|>"])
    tok.train_from_iterator(["system user assistant You are helpful . What is the warranty of model ? Two years",
                             "hello world how are you"], trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<|im_start|>",
                                   eos_token="<|im_end|>", pad_token="<|im_end|>")
    fast.chat_template = CHAT_TEMPLATE
    folder = tmp_path_factory.mktemp("tiny-tokenizer")
    fast.save_pretrained(folder)
    return folder


@pytest.fixture
def tiny_base_model(db, tiny_tokenizer_dir):
    from catalog.models import BaseModel

    return BaseModel.objects.create(name="tiny-chat", kind=BaseModel.Kind.CAUSAL_LM, path=str(tiny_tokenizer_dir),
                                    tokenizer_present=True, has_chat_template=True,
                                    config={"max_position_embeddings": 40})


@pytest.fixture
def api_client(client, users, teams):
    """api_client(username, team_name) -> a Django test client sending that user's bearer token."""
    from accounts.models import Team
    from accounts.services import api_token_create

    def make(username: str, team: str):
        _token, secret = api_token_create(user=users[username], team=Team.objects.get(name=team))
        client.defaults["HTTP_AUTHORIZATION"] = f"Bearer {secret}"
        return client

    return make
