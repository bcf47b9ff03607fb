"""Files of dataset versions under ``DATA_DIR/datasets/<team>/<sha256>.jsonl``.

Content-addressed: the file name is the SHA-256 of the normalised content, so identical content is
stored once per team. Files are written to a temporary name in the same folder and moved into place
with ``os.replace`` (atomic), so a reader never sees half a file and a failed upload leaves nothing.
Paths in the database are relative to DATA_DIR; nothing is ever opened by a path a user typed.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import unicodedata
from collections.abc import Iterator
from pathlib import Path

from django.conf import settings

DATASETS_DIR = "datasets"
SHA_RE = re.compile(r"^[0-9a-f]{64}$")
_UNSAFE_FILENAME = re.compile(r"[\x00-\x1f\x7f<>:\"|?*]+")


def data_dir() -> Path:
    return Path(settings.DATA_DIR)


def team_dir(team_name: str) -> Path:
    # Team names are slugs (validated by accounts), so they are safe as one path component.
    if not team_name or "/" in team_name or "\\" in team_name or team_name in (".", ".."):
        raise ValueError(f"unsafe team name {team_name!r}")
    return data_dir() / DATASETS_DIR / team_name


def relative_path(team_name: str, sha256: str, suffix: str = ".jsonl") -> str:
    if not SHA_RE.match(sha256):
        raise ValueError(f"not a sha256: {sha256!r}")
    return f"{DATASETS_DIR}/{team_name}/{sha256}{suffix}"


def absolute(relative: str) -> Path:
    """The absolute path of a stored relative path, refusing anything that would leave DATA_DIR."""
    root = data_dir().resolve()
    path = (root / relative).resolve()
    if root not in path.parents:
        raise ValueError(f"path {relative!r} is outside DATA_DIR")
    return path


def sanitize_filename(name: str | None, *, default: str = "upload", max_length: int = 200) -> str:
    """Keep only the base name of an uploaded file's name, without control or reserved characters."""
    name = unicodedata.normalize("NFC", str(name or ""))
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = _UNSAFE_FILENAME.sub("_", name).strip().strip(".")
    if not name:
        return default
    if len(name) > max_length:
        stem, dot, ext = name.rpartition(".")
        name = (stem[: max_length - len(ext) - 1] + dot + ext) if dot and len(ext) < 16 else name[:max_length]
    return name


class NormalisedWriter:
    """Collects normalised lines in a temporary file while hashing them; ``commit`` moves it into place."""

    def __init__(self, team_name: str) -> None:
        self.team_name = team_name
        self.folder = team_dir(team_name)
        self.folder.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".upload-", suffix=".jsonl.tmp", dir=self.folder)
        self.tmp_path = Path(name)
        self.file = os.fdopen(fd, "wb", buffering=1 << 20)
        self.digest = hashlib.sha256()
        self.rows = 0
        self.bytes = 0
        self.closed = False

    def write(self, line: bytes) -> None:
        self.file.write(line)
        self.digest.update(line)
        self.rows += 1
        self.bytes += len(line)

    @property
    def sha256(self) -> str:
        return self.digest.hexdigest()

    def _close(self) -> None:
        if not self.closed:
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
            self.closed = True

    def commit(self) -> str:
        """Move the file to its content address; returns the path relative to DATA_DIR."""
        self._close()
        relative = relative_path(self.team_name, self.sha256)
        final = absolute(relative)
        if final.exists():  # same content stored before (another dataset, or a race): keep the old file
            self.tmp_path.unlink(missing_ok=True)
        else:
            os.chmod(self.tmp_path, 0o644)  # mkstemp makes it private; the worker may run as another user
            os.replace(self.tmp_path, final)
        return relative

    def abort(self) -> None:
        if not self.closed:
            self.file.close()
            self.closed = True
        self.tmp_path.unlink(missing_ok=True)

    def __enter__(self) -> NormalisedWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None or not self.closed:
            self.abort()


def iter_lines(relative: str) -> Iterator[bytes]:
    """The stored lines (bytes, with their newline) of a version's file."""
    with absolute(relative).open("rb") as fh:
        yield from fh


def remove(relative: str) -> None:
    try:
        absolute(relative).unlink(missing_ok=True)
    except ValueError:
        pass
