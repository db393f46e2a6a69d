"""Which files each committed experience moved where: ``STATE/learned-files.json``.

``bnncl learn`` writes an experience's record (id, sha256 and size of each file, and the path under
the done folder it is moved to) after the experience is committed and before its files are moved,
atomically and durably (:func:`bnncl.atomic.replace_file`). It keeps the records of the last
:data:`KEEP` experiences.

Why: the state may later load an older generation than the newest (the newest is damaged: the
fallback; or an older backup was restored). The experiences after the loaded one are then lost
from the state, but their files are already in the done folder. Their records name those files, so
the loop moves them back into ``INCOMING`` and learns them again (:meth:`LearnLoop.relearn_lost
<bnncl.service.learn.LearnLoop.relearn_lost>`). A damaged journal is reported and started afresh.

Format: JSON ``{"format": "bnncl-learned-files", "experiences": {"E": [{"id", "sha256", "bytes",
"moved_to"}, ...]}, "sha256": sha256 of the canonical experiences}``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from bnncl.atomic import replace_file

FILE = "learned-files.json"
FORMAT = "bnncl-learned-files"
KEEP = 16
"""Records kept: far more experiences than a fallback can lose (the store keeps two generations)."""

Record = dict[str, Any]


def _checksum(experiences: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(experiences, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class Journal:
    """The records of the last experiences in one state directory (module docstring)."""

    def __init__(self, state_dir: Path, experiences: dict[int, list[Record]] | None = None) -> None:
        self.path = Path(state_dir) / FILE
        self.experiences: dict[int, list[Record]] = dict(experiences or {})

    @classmethod
    def load(cls, state_dir: Path, warn: Callable[[str], None]) -> Journal:
        """Read the journal; missing: empty; damaged: empty, with a warning."""
        path = Path(state_dir) / FILE
        try:
            doc = json.loads(path.read_bytes())
            experiences = doc["experiences"]
            if doc.get("format") != FORMAT or doc.get("sha256") != _checksum(experiences):
                raise ValueError("checksum mismatch")
            return cls(state_dir, {int(e): list(files) for e, files in experiences.items()})
        except FileNotFoundError:
            return cls(state_dir)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            warn(f"{path}: damaged ({exc}); started afresh (a fallback to an older state generation would not "
                 f"relearn the files of the experiences it loses)")
            return cls(state_dir)

    def _write(self) -> None:
        experiences = {str(e): files for e, files in sorted(self.experiences.items())}
        doc = {"format": FORMAT, "experiences": experiences, "sha256": _checksum(experiences)}
        replace_file(self.path, json.dumps(doc, sort_keys=True, indent=1).encode())

    def record(self, experience: int, files: Iterable[Record]) -> None:
        """Add (or update, by id) the files of ``experience``; durable when it returns."""
        merged = {f["id"]: f for f in self.experiences.get(experience, [])}
        merged.update({f["id"]: dict(f) for f in files})
        self.experiences[experience] = list(merged.values())
        for old in sorted(self.experiences)[:-KEEP]:
            del self.experiences[old]
        self._write()

    def after(self, experience: int) -> dict[int, list[Record]]:
        """The records of the experiences after ``experience`` (those a state at ``experience`` lost)."""
        return {e: files for e, files in sorted(self.experiences.items()) if e > experience}

    def forget(self, experiences: Iterable[int]) -> None:
        """Drop the records of ``experiences``; durable when it returns."""
        gone = [e for e in experiences if e in self.experiences]
        for e in gone:
            del self.experiences[e]
        if gone:
            self._write()
