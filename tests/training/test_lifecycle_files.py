"""Adapter lifecycle on disk: the merge job (plain transformers loads the result and generates exactly what
base + adapter generates), the Ollama bundle checked against Ollama's Modelfile syntax, and adapter scans."""

from __future__ import annotations

import io
import json
import re
import zipfile
from pathlib import Path

import pytest

from catalog.models import BaseModel
from jobs import runtime
from jobs.models import JobStatus
from tests.training.lifecycle_helpers import copy_adapter, save_tiny_adapter
from training import lifecycle
from training.models import Adapter, AdapterEvent, MergeJob

pytestmark = pytest.mark.django_db


@pytest.fixture(scope="session")
def tiny_adapter_dir(tiny_model_dir, tmp_path_factory) -> Path:
    return save_tiny_adapter(tiny_model_dir, tmp_path_factory.mktemp("lora") / "tiny-lora")


@pytest.fixture
def team(make_team):
    return make_team("alpha")


@pytest.fixture
def member(make_user, team):
    return make_user("alice", team, "member")


@pytest.fixture
def adapter(team, member, tiny_base_model, tiny_adapter_dir, data_dir) -> Adapter:
    folder = copy_adapter(tiny_adapter_dir, data_dir / "adapters" / "faq-bot_20250101-120000")
    return Adapter.objects.create(name="faq-bot", team=team, created_by=member, base_model=tiny_base_model,
                                  path=str(folder), lora_config={"r": 4})


# ------------------------------------------------------------------------------------------------ merge

def _greedy(model, tokenizer, prompt: str, n: int = 12) -> list[int]:
    import torch

    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                         tokenize=False)
    inputs = tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)
    return out[0, inputs["input_ids"].shape[1]:].tolist()


def test_merge_job_writes_a_standalone_model_that_generates_like_base_plus_adapter(adapter, member, team,
                                                                                     tiny_model_dir, data_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    job = lifecycle.adapter_merge(user=member, adapter=adapter)
    assert job.status == JobStatus.QUEUED and job.output_name == "faq-bot-merged"
    assert runtime.run_foreground(job) == JobStatus.SUCCEEDED
    job.refresh_from_db()
    merged_row = job.result
    assert merged_row.team == team and merged_row.kind == BaseModel.Kind.CAUSAL_LM and merged_row.available
    folder = Path(merged_row.path)
    assert folder == (data_dir / "models" / "faq-bot-merged").resolve()
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
    assert "adapter_config.json" not in names
    assert [p.name for p in (data_dir / "models").iterdir()] == ["faq-bot-merged"]  # no temporary folder left

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    merged = AutoModelForCausalLM.from_pretrained(str(folder)).eval()
    with_adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)),
                                             adapter.path).eval()
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).eval()
    for prompt in ("What is the warranty period?", "Is shipping free?"):
        expected = _greedy(with_adapter, tokenizer, prompt)
        assert _greedy(merged, tokenizer, prompt) == expected
    assert any(_greedy(base, tokenizer, p) != _greedy(with_adapter, tokenizer, p)
               for p in ("What is the warranty period?", "Is shipping free?")), "the adapter changes nothing"

    # It is a base model like any other: visible to the team, trainable, servable; a rescan does not duplicate it.
    from catalog.services import base_model_get, base_models_scan
    from serving.services import chat_model_resolve

    assert base_model_get(user=member, ref="faq-bot-merged", kind="causal-lm") == merged_row
    assert chat_model_resolve(user=member, name="faq-bot-merged").base == merged_row
    base_models_scan(user=member, include_defaults=False, paths=[data_dir / "models"])
    assert BaseModel.objects.filter(name__startswith="faq-bot-merged").count() == 1
    lineage = lifecycle.adapter_lineage(user=member, adapter=adapter)
    assert lineage["merges"][0]["base_model_id"] == merged_row.pk
    assert AdapterEvent.objects.filter(adapter=adapter, action="merged").exists()


def test_failed_merge_leaves_no_folder_and_no_model(adapter, member, data_dir, monkeypatch):
    import transformers

    def broken(*args, **kwargs):
        raise OSError("tokenizer unreadable")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", broken)
    job = lifecycle.adapter_merge(user=member, adapter=adapter, name="broken")
    assert runtime.run_foreground(job) == JobStatus.FAILED
    job.refresh_from_db()
    assert "tokenizer unreadable" in job.error_message
    assert not (data_dir / "models").exists() or list((data_dir / "models").iterdir()) == []
    assert not BaseModel.objects.filter(name="broken").exists()


def test_merge_api_rules(adapter, team, member, make_user, token_for, bearer, tiny_base_model):
    client = bearer(token_for(member, team))
    response = client.post(f"/api/adapters/{adapter.pk}/merge", {"name": "my merged"},
                           content_type="application/json")
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["status"] == "queued" and body["output_name"] == "my_merged" and body["adapter_id"] == adapter.pk
    assert client.get(f"/api/merges/{body['id']}").json()["id"] == body["id"]
    assert client.get("/api/merges").json()["count"] == 1
    again = client.post(f"/api/adapters/{adapter.pk}/merge", {"name": "my merged"}, content_type="application/json")
    assert again.status_code == 409 and again.json()["code"] == "name_taken"
    viewer = bearer(token_for(make_user("val", team, "viewer"), team))
    assert viewer.post(f"/api/adapters/{adapter.pk}/merge", {}, content_type="application/json").status_code == 403
    clf = Adapter.objects.create(name="clf", team=team, kind=Adapter.Kind.CLASSIFIER, base_model=tiny_base_model,
                                 path=adapter.path)
    wrong = client.post(f"/api/adapters/{clf.pk}/merge", {}, content_type="application/json")
    assert wrong.status_code == 400 and wrong.json()["code"] == "wrong_adapter_kind"


# ------------------------------------------------------------------------------------------------ Ollama
# Ollama's documented Modelfile syntax (docs/modelfile.md): `INSTRUCTION arguments`, instructions are
# case-insensitive, `#` starts a comment, multi-line values go in triple quotes.

INSTRUCTIONS = {"FROM", "ADAPTER", "TEMPLATE", "PARAMETER", "SYSTEM", "LICENSE", "MESSAGE"}
PARAMETERS = {"mirostat": int, "mirostat_eta": float, "mirostat_tau": float, "num_ctx": int, "repeat_last_n": int,
              "repeat_penalty": float, "temperature": float, "seed": int, "stop": str, "num_predict": int,
              "top_k": int, "top_p": float, "min_p": float}
GO_VARIABLES = {".System", ".Prompt", ".Response", ".Messages", ".Role", ".Content", ".Tools", ".ToolCalls"}


def parse_modelfile(text: str) -> list[tuple[str, str]]:
    commands = []
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        i += 1
        if not line or line.startswith("#"):
            continue
        instruction, _, rest = line.partition(" ")
        assert instruction.upper() in INSTRUCTIONS, f"unknown instruction {instruction!r}"
        rest = rest.strip()
        assert rest, f"{instruction} without arguments"
        if rest.startswith('"""'):
            body = rest[3:]
            while '"""' not in body:
                assert i < len(lines), f'unterminated """ after {instruction}'
                body += "\n" + lines[i]
                i += 1
            value, _, tail = body.partition('"""')
            assert not tail.strip(), f"text after the closing triple quotes of {instruction}"
        else:
            value = rest
        commands.append((instruction.upper(), value))
    return commands


def check_parameter(value: str) -> tuple[str, object]:
    name, _, raw = value.partition(" ")
    assert name in PARAMETERS, f"invalid PARAMETER name {name!r}"
    raw = raw.strip()
    if PARAMETERS[name] is str:
        return name, json.loads(raw) if raw.startswith('"') else raw
    return name, PARAMETERS[name](raw)


def go_actions(template: str) -> list[str]:
    """The actions of a Go template, checked for balanced ``{{ }}`` and ``if/range/with ... end`` blocks."""
    assert template.count("{{") == template.count("}}"), "unbalanced {{ }}"
    actions = re.findall(r"\{\{-?\s*(.*?)\s*-?\}\}", template, flags=re.S)
    assert len(actions) == template.count("{{")
    depth = 0
    for action in actions:
        word = action.split()[0] if action.split() else ""
        if word in ("if", "range", "with", "block", "define"):
            depth += 1
        elif word == "end":
            depth -= 1
            assert depth >= 0, "{{ end }} without an opening block"
        for variable in re.findall(r"(?<![\w$])\.[A-Z]\w*", action):
            assert variable in GO_VARIABLES, f"unknown template variable {variable}"
    assert depth == 0, "unclosed {{ range }}/{{ if }} block"
    return actions


def render_chatml_go(template: str, messages: list[dict]) -> str:
    """A tiny evaluator for the subset the ChatML translation uses: trim markers, range .Messages, .Role, .Content."""
    parts = re.split(r"(\{\{-?\s*.*?\s*-?\}\})", template, flags=re.S)
    for i, part in enumerate(parts):  # apply {{- and -}} whitespace trimming to the neighbouring text
        if part.startswith("{{-") and i > 0:
            parts[i - 1] = parts[i - 1].rstrip()
        if part.endswith("-}}") and i + 1 < len(parts):
            parts[i + 1] = parts[i + 1].lstrip()

    def run(tokens: list[str], scope: dict) -> str:
        out, i = [], 0
        while i < len(tokens):
            tok = tokens[i]
            if not tok.startswith("{{"):
                out.append(tok)
                i += 1
                continue
            action = re.sub(r"^\{\{-?\s*|\s*-?\}\}$", "", tok)
            if action == "range .Messages":
                depth, j = 1, i + 1
                while depth:
                    inner = re.sub(r"^\{\{-?\s*|\s*-?\}\}$", "", tokens[j]) if tokens[j].startswith("{{") else ""
                    depth += inner.startswith(("range", "if")) - (inner == "end")
                    j += 1
                for message in scope["Messages"]:
                    out.append(run(tokens[i + 1:j - 1], {**scope, **{k.capitalize(): v for k, v in message.items()}}))
                i = j
            else:
                out.append(str(scope[action.lstrip(".")]))
                i += 1
        return "".join(out)

    return run(parts, {"Messages": messages})


def _bundle(client, adapter, **params) -> zipfile.ZipFile:
    response = client.get(f"/api/adapters/{adapter.pk}/ollama", params)
    assert response.status_code == 200, response.content
    assert response["Content-Disposition"] == 'attachment; filename="faq-bot-ollama.zip"'
    return zipfile.ZipFile(io.BytesIO(b"".join(response.streaming_content)))


def test_ollama_bundle_follows_the_modelfile_syntax(adapter, team, member, token_for, bearer, tiny_model_dir):
    from transformers import AutoTokenizer

    client = bearer(token_for(member, team))
    bundle = _bundle(client, adapter)
    names = set(bundle.namelist())
    assert names == {"faq-bot-ollama/Modelfile", "faq-bot-ollama/README.md", "faq-bot-ollama/adapter/adapter_config.json",
                     "faq-bot-ollama/adapter/adapter_model.safetensors"}
    text = bundle.read("faq-bot-ollama/Modelfile").decode()
    commands = parse_modelfile(text)
    froms = [v for k, v in commands if k == "FROM"]
    assert froms == [str(tiny_model_dir)]  # default: the base model's folder
    assert [v for k, v in commands if k == "ADAPTER"] == ["./adapter"]
    assert re.search(r'^TEMPLATE """', text, flags=re.M), "TEMPLATE must be in triple quotes"
    params = [check_parameter(v) for k, v in commands if k == "PARAMETER"]
    assert ("stop", "<|im_end|>") in params and ("stop", "<|im_start|>") in params
    assert ("temperature", 0.7) in params and ("num_ctx", 512) in params
    templates = [v for k, v in commands if k == "TEMPLATE"]
    assert len(templates) == 1
    actions = go_actions(templates[0])
    assert "range .Messages" in actions
    # The tiny template's default system prompt becomes SYSTEM (Ollama inserts it as the first message).
    assert [v for k, v in commands if k == "SYSTEM"] == ["You are a tiny bot"]
    # The Go template renders the conversation exactly as the model's own Jinja chat template does.
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    messages = [{"role": "system", "content": "You are a tiny bot"}, {"role": "user", "content": "Hi there"},
                {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Is shipping free?"}]
    assert render_chatml_go(templates[0], messages) == tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=False)
    readme = bundle.read("faq-bot-ollama/README.md").decode()
    assert "ollama create faq-bot -f Modelfile" in readme
    assert json.loads(bundle.read("faq-bot-ollama/adapter/adapter_config.json"))["peft_type"] == "LORA"


def test_ollama_bundle_takes_a_from_name_and_options(adapter, team, member, token_for, bearer):
    client = bearer(token_for(member, team))
    bundle = _bundle(client, adapter, **{"from": "smollm2:135m", "name": "faq:v2", "temperature": "0.2"})
    text = bundle.read("faq-bot-ollama/Modelfile").decode()
    commands = parse_modelfile(text.replace("FROM", "from", 1))  # instructions are case-insensitive
    assert ("FROM", "smollm2:135m") in commands
    assert ("temperature", 0.2) in [check_parameter(v) for k, v in commands if k == "PARAMETER"]
    assert "ollama create faq:v2 -f Modelfile" in bundle.read("faq-bot-ollama/README.md").decode()
    bad = client.get(f"/api/adapters/{adapter.pk}/ollama", {"from": 'x"""\nSYSTEM evil'})
    assert bad.status_code == 400 and bad.json()["param"] == "from"
    bad = client.get(f"/api/adapters/{adapter.pk}/ollama", {"name": "Not A Name"})
    assert bad.status_code == 400 and bad.json()["param"] == "name"


def test_template_translation_styles():
    llama3 = "{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n{{ m['content'] }}<|eot_id|>{% endfor %}"
    translated = lifecycle.ollama_template(llama3)
    assert translated.style == "llama3" and "<|eot_id|>" in translated.stops
    go_actions(translated.template)
    assert lifecycle.ollama_template("{{ bos_token }}{% for m in messages %}[INST] {{ m['content'] }}{% endfor %}") \
        is None
    assert lifecycle.ollama_template(None) is None


# ------------------------------------------------------------------------------------------------ scan

def test_scan_registers_adapter_folders_by_base_path_or_name(team, member, tiny_base_model, tiny_adapter_dir,
                                                             tmp_path, settings, adapter):
    external = tmp_path / "external"
    by_path = copy_adapter(tiny_adapter_dir, external / "by-path")
    by_name = copy_adapter(tiny_adapter_dir, external / "nested" / "by-name_20250102-101010")
    config = json.loads((by_name / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "some-org/tiny-llama"
    (by_name / "adapter_config.json").write_text(json.dumps(config))
    unknown = copy_adapter(tiny_adapter_dir, external / "unknown")
    config["base_model_name_or_path"] = "some-org/not-here"
    (unknown / "adapter_config.json").write_text(json.dumps(config))
    settings.MODEL_DIRS = [external]

    skipped = {r.name: r.action for r in lifecycle.adapters_scan(team=None)}
    assert skipped == {"faq-bot_20250101-120000": "unchanged", "by-path": "skipped",
                       "by-name_20250102-101010": "skipped", "unknown": "unmatched"}
    rows = lifecycle.adapters_scan(team=team, user=member)
    actions = {r.path: r.action for r in rows}
    assert actions[str(by_path.resolve())] == "added" and actions[str(by_name.resolve())] == "added"
    assert actions[str(unknown.resolve())] == "unmatched" and actions[adapter.path] == "unchanged"
    found = Adapter.objects.get(path=str(by_name.resolve()))
    assert found.name == "by-name" and found.model_name == "by-name" and found.source == "scanned"
    assert found.base_model == tiny_base_model and found.team == team and found.trainable_parameters > 0
    assert found.events.get().action == "registered"
    assert Adapter.objects.count() == 3
    again = lifecycle.adapters_scan(team=team)
    assert {r.action for r in again} == {"unchanged", "unmatched"} and Adapter.objects.count() == 3


def test_scan_models_command_reports_adapters(team, member, tiny_base_model, tiny_adapter_dir, tmp_path):
    from django.core.management import call_command

    copy_adapter(tiny_adapter_dir, tmp_path / "ext" / "cmd-adapter")
    out = io.StringIO()
    call_command("scan_models", str(tmp_path / "ext"), "--only-paths", "--user", "alice", stdout=out)
    assert "pass --team" in out.getvalue() and not Adapter.objects.exists()
    call_command("scan_models", str(tmp_path / "ext"), "--only-paths", "--team", "alpha", "--user", "alice",
                 stdout=out)
    assert "adapters scanned: added 1" in out.getvalue()
    assert Adapter.objects.get().name == "cmd-adapter"
    assert MergeJob.objects.count() == 0
