from __future__ import annotations

import json
import sys

from django.conf import settings

from accounts.commands import add_user_argument, command_actor
from classifier.services import classifier_adapter_get, classifier_predict
from core.commands import ServiceCommand
from core.errors import ApplicationError


class Command(ServiceCommand):
    help = ("Classify texts with a classifier adapter: TEXT arguments or --text, --file (one text a line), "
            "--interactive (a prompt loop), or lines from stdin. Prints one JSON object a line, in input order.")

    def add_arguments(self, parser):
        parser.add_argument("adapter", help="Classifier adapter name or id.")
        parser.add_argument("texts", nargs="*", metavar="TEXT")
        parser.add_argument("--text", action="append", default=[], help="A text to classify (repeatable).")
        parser.add_argument("--file", default=None, help="A UTF-8 file with one text a line ('-' for stdin).")
        parser.add_argument("--interactive", action="store_true", help="Prompt for texts until an empty line.")
        parser.add_argument("--team", default=None, help="The adapter's team, whose first admin acts when --user "
                                                         "is left out (default: the first superuser).")
        add_user_argument(parser)

    def _emit(self, user, adapter, texts: list[str]) -> None:
        step = settings.CLASSIFIER_MAX_BATCH
        for i in range(0, len(texts), step):
            for text, pred in zip(texts[i:i + step], classifier_predict(user=user, adapter=adapter,
                                                                       texts=texts[i:i + step]), strict=True):
                self.stdout.write(json.dumps({"text": text, **pred}, ensure_ascii=False))

    def run(self, *args, **opts):
        user = command_actor(username=opts["user"], team=opts["team"])
        adapter = classifier_adapter_get(user=user, ref=opts["adapter"])
        if opts["interactive"]:
            return self._interactive(user, adapter)
        texts = list(opts["texts"]) + list(opts["text"])
        if opts["file"]:
            # Not a `with open(...)`: the stream is either stdin or the file; the `with` below closes either.
            stream = sys.stdin if opts["file"] == "-" else open(opts["file"], encoding="utf-8")
            with stream:
                texts += [line.rstrip("\n") for line in stream if line.strip()]
        elif not texts:
            texts = [line.rstrip("\n") for line in sys.stdin if line.strip()]
        if not texts:
            raise ApplicationError("Nothing to classify: give TEXT, --text, --file or --interactive.", param="text")
        self._emit(user, adapter, texts)

    def _interactive(self, user, adapter) -> None:
        labels = ", ".join((adapter.label_map or {}).values())
        self.stdout.write(f"Classifier {adapter.name} ({labels}). Type a text; an empty line or Ctrl-D quits.")
        while True:
            try:
                text = input("> ")
            except EOFError:
                break
            if not text.strip():
                break
            pred = classifier_predict(user=user, adapter=adapter, texts=[text])[0]
            probs = "  ".join(f"{k}={v:.3f}" for k, v in sorted(pred["probabilities"].items(), key=lambda kv: -kv[1]))
            self.stdout.write(f"{pred['label']} ({pred['confidence']:.3f})   {probs}")
