"""The preview shows exactly what training trains: the same tokens and the same trained positions, for a base model
without a chat template (the fallback "auto" resolves to) and for one with its own, for chat, tool, prompt/completion
and plain-text rows.

The preview side is the web service (``version_preview`` over the process-wide cached tokenizer, which it must not
change); the training side is the SFT recipe's own data step (``ml.train.sft.prepare_data``), which installs the run's
template on its tokenizer and builds the dataset items the Trainer consumes."""

from __future__ import annotations

import pytest
from dataset_helpers import jsonl, tool_row

from catalog.models import BaseModel
from datasets_app import services
from ml import data
from ml.hparams import resolve_params
from ml.model import cached_tokenizer
from ml.templates import DEFAULT_FALLBACK, fallback_template

sft = pytest.importorskip("ml.train.sft")  # imports torch: the training side

WORDS = ("system user assistant You are helpful . What is the warranty of model ? Two years hello world how are "
         "you Weather in Paris It is 21 °C ( ) 0 1 2 3 4 5 6 7 8 9 ### Instruction Response : tool_call tool_response "
         "tools name arguments city get_weather temp { } \" , Tools call functions").split()


@pytest.fixture(scope="module")
def no_template_dir(tmp_path_factory):
    """A real fast tokenizer with no chat template and no pad token (as many base models ship)."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(Regex(r"\w+|[^\w\s]"), behavior="isolated")])
    tok.train_from_iterator([" ".join(WORDS)], trainer=trainers.WordLevelTrainer(special_tokens=["<unk>", "</s>"]))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="</s>")
    assert not fast.chat_template and fast.pad_token is None
    folder = tmp_path_factory.mktemp("no-template")
    fast.save_pretrained(folder)
    return folder


ROWS = {
    "chat": [{"messages": [{"role": "system", "content": "You are helpful."},
                           {"role": "user", "content": f"What is the warranty of model {i}?"},
                           {"role": "assistant", "content": "hello world", "weight": 0},
                           {"role": "user", "content": "how are you"},
                           {"role": "assistant", "content": f"Two years {i}."}]} for i in range(10)],
    "tools": [tool_row(i) for i in range(10)],
    "completion": [{"prompt": f"What is the warranty of model {i}?", "completion": " Two years."} for i in range(10)],
    "text": [{"text": f"hello world {i} how are you"} for i in range(10)],
}


def trained_by_training(folder, records):
    """(input_ids, trained positions) of each item the SFT recipe would train on."""
    params = resolve_params({"max_seq_length": 512, "packing": False}, n_examples=len(records), device="cpu",
                            has_chat_template=bool(cached_tokenizer(folder).chat_template))
    spec = sft.RunSpec(base_model_path=folder, train=records, params=params, run_dir=folder / "run",
                       adapter_dir=folder / "adapter")
    prepared = sft.prepare_data(spec, sft.NullHooks(), base=folder, device="cpu")
    # an item's shift label at t is the label of token t + 1: token t + 1 is trained when it is not ignored
    return prepared, [(item["input_ids"], [label != data.IGNORE_INDEX for label in item["shift_labels"][:-1]])
                      for item in prepared.train_items]


@pytest.mark.parametrize("kind", sorted(ROWS))
@pytest.mark.parametrize("model", ["no chat template", "own chat template"])
def test_the_preview_renders_exactly_what_training_trains(kind, model, no_template_dir, tiny_tokenizer_dir, upload,
                                                          tmp_path):
    folder = no_template_dir if model == "no chat template" else tiny_tokenizer_dir
    base = BaseModel.objects.create(name=f"tiny-{kind}", kind=BaseModel.Kind.CAUSAL_LM, path=str(folder),
                                    tokenizer_present=True, has_chat_template=model != "no chat template",
                                    config={"max_position_embeddings": 512})
    version = upload(jsonl(ROWS[kind]), name=kind)
    records = list(services.iter_records(version))
    preview = services.version_preview(version=version, base_model=base, n=len(records))

    prepared, trained = trained_by_training(folder, records)
    assert prepared.report["train"]["examples"] == len(records)  # nothing dropped: the items are the rows, in order
    web_tokenizer = cached_tokenizer(folder)
    for record, example, (ids, positions) in zip(records, preview["examples"], trained, strict=True):
        shown = data.encode_record(web_tokenizer, record, with_offsets=True)  # what version_preview rendered
        assert shown.input_ids == ids
        assert shown.trained[1:] == positions  # the first token has nothing before it to be predicted from
        assert example["tokens"] == len(ids) and example["text"] == shown.rendered.text
        assert example["trained_tokens"] == shown.n_trained
        assert sum(s["tokens"] for s in example["segments"] if s["trained"]) == shown.n_trained
        assert "".join(s["text"] for s in example["segments"]) == shown.rendered.text

    if model == "no chat template":
        assert prepared.template == DEFAULT_FALLBACK == "alpaca"
        assert prepared.tokenizer.chat_template == fallback_template()
        assert preview["chat_template"].startswith("fallback (alpaca")
        if kind in ("chat", "tools"):
            assert preview["examples"][0]["template"] == "alpaca"
            assert "### Response:" in preview["examples"][0]["text"]
        assert not web_tokenizer.chat_template  # the cached tokenizer was rendered through, never changed
    else:
        assert prepared.template == "chat_template" and preview["chat_template"] == "model"


def test_trained_text_of_a_model_without_template_is_the_answers_and_their_end(no_template_dir):
    encoded = data.encode_record(cached_tokenizer(no_template_dir), ROWS["chat"][0], with_offsets=True)
    trained = [s["text"] for s in data.segments(encoded) if s["trained"]]
    assert trained == ["Two years 0.</s>"]  # the weight-0 answer is shown, not trained
    assert encoded.rendered.text.startswith("You are helpful.\n\n### Instruction:\nWhat is the warranty")
