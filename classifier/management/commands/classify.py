from __future__ import annotations

import json
import sys

from django.contrib.auth import get_user_model

from classifier.services import classifier_adapter_get, classifier_predict, max_batch
from core.commands import ServiceCommand
from core.errors import ApplicationError, NotFound


def _user(username: str | None):
    User = get_user_model()
    if username:
        try:
            return User.objects.get(username=username)
        except User.DoesNotExist:
            raise NotFound(f"User {username!r} not found.", param="user") from None
    user = User.objects.filter(is_superuser=True).order_by("pk").first()
    if user is None:
        raise ApplicationError("No user to act as: pass --user USERNAME.", param="user")
    return user


class Command(ServiceCommand):
    help = ("Classify texts with a classifier adapter: TEXT arguments or --text, --file (one text a line), "
            "--interactive (a prompt loop), or lines from stdin. Prints one JSON object a line, in input order.")

    def add_arguments(self, parser):
        parser.add_argument("adapter", help="Classifier adapter name or id.")
        parser.add_argument("texts", nargs="*", metavar="TEXT")
        parser.add_argument("--text", action="append", default=[], help="A text to classify (repeatable).")
        parser.add_argument("--file", default=None, help="A UTF-8 file with one text a line ('-' for stdin).")
        parser.add_argument("--interactive", action="store_true", help="Prompt for texts until an empty line.")
        parser.add_argument("--user", default=None, help="Act as this user (default: the first superuser).")

    def _emit(self, user, adapter, texts: list[str]) -> None:
        step = max_batch()
        for i in range(0, len(texts), step):
            for text, pred in zip(texts[i:i + step], classifier_predict(user=user, adapter=adapter,
                                                                       texts=texts[i:i + step]), strict=True):
                self.stdout.write(json.dumps({"text": text, **pred}, ensure_ascii=False))

    def run(self, *args, **opts):
        user = _user(opts["user"])
        adapter = classifier_adapter_get(user=user, ref=opts["adapter"])
        if opts["interactive"]:
            return self._interactive(user, adapter)
        texts = list(opts["texts"]) + list(opts["text"])
        if opts["file"]:
            stream = sys.stdin if opts["file"] == "-" else open(opts["file"], encoding="utf-8")  # noqa: SIM115
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
