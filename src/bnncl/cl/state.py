"""Crash-safe persistent state of the on-device learner: versioned, checksummed, no pickle.

A state is what :meth:`bnncl.cl.learner.ContinualLearner.state_dict` returns (a dict of NumPy
arrays + a JSON-able meta dict) plus the caller's metadata: the identity (sha256) of the model file
it belongs to and the protocol position (e.g. the last completed experience and the ids of the
inputs already learned). Layout of a state directory::

    DIR/
      CURRENT                    "gen-00000042 <self_sha256 of its manifest> <check>\\n": the
                                 committed generation (the commit point), bound to that exact
                                 manifest; <check> (16 hex of sha256 of the rest) detects damage
      LOCK                       empty; flock'ed by a writer so two writers never interleave
      gen-00000041/              the previous good generation, kept until the next commit
      gen-00000042/
        arrays.safetensors       every array (safetensors, NumPy)
        meta.json                {"learner": meta, "position": ..., "model_sha256": ...}
        MANIFEST.json            format, format_version, generation, created, sha256 + size of
                                 both files above, and ``self_sha256`` over the manifest itself
      .tmp-gen-00000043/         a generation being written (removed by the next save)
      .del-gen-00000040/         a pruned generation being deleted (removed by the next save)

Saving writes a complete new generation into a hidden temp folder (each file fsync'ed, then the
folder), renames it to ``gen-N``, fsyncs ``DIR``, then atomically replaces ``CURRENT`` (temp file,
fsync, rename, fsync ``DIR``). Only then are generations other than the new one and the previous
good one pruned. (The first save also fsyncs the parent of ``DIR``, so the folder itself survives a
power cut. On a full disk, a save first removes the generations it would prune anyway and retries
once, so room for one generation beside the committed one is enough.) Loading reads ``CURRENT``,
verifies the manifest and every checksum, and, if that generation is damaged, falls back to the
newest older intact one with a warning. Generations newer than ``CURRENT`` were never committed
and are ignored. Every durable operation goes through :mod:`bnncl.atomic`; ``tests/crashsim.py``
records them and checks the load at every point a power cut could interrupt them.

Errors are one-line :class:`StateError` subclasses; none of them changes what is on disk.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.numpy

from bnncl import atomic
from bnncl.atomic import fsync_dir, replace_file, write_new_file
from bnncl.errors import BnnclError

FORMAT = "bnncl-cl-state"
FORMAT_VERSION = 1
ARRAYS_FILE = "arrays.safetensors"
META_FILE = "meta.json"
MANIFEST_FILE = "MANIFEST.json"
CURRENT_FILE = "CURRENT"
LOCK_FILE = "LOCK"
_GEN_RE = re.compile(r"gen-(\d{8})")
_CURRENT_RE = re.compile(r"((gen-\d{8}) ([0-9a-f]{64})) ([0-9a-f]{16})\n")
_TMP_PREFIX = ".tmp-gen-"
_TRASH_PREFIX = ".del-gen-"
_MAX_MANIFEST_BYTES = 1 << 20


class StateError(BnnclError):
    """The learner state cannot be saved or loaded (one line: the directory and what is wrong)."""


class NoStateError(StateError):
    """The state directory is missing or holds no state yet (a fresh device, not a fault)."""


class StateCorruptError(StateError):
    """No generation in the state directory passes its manifest and checksum checks."""


class StateVersionError(StateError):
    """The state was written by a newer bnncl (format version above :data:`FORMAT_VERSION`)."""


class StateMismatchError(StateError):
    """The state belongs to another model file (its recorded sha256 differs from the caller's)."""


class StateWriteError(StateError):
    """Writing a new generation failed (e.g. disk full); the previous state is kept as it was."""

    disk_full: bool = False
    """True when the file system said it is full (ENOSPC, EDQUOT)."""


@dataclass(frozen=True)
class LoadedState:
    """A state read back by :meth:`StateStore.load`."""

    arrays: dict[str, np.ndarray]
    """The learner's arrays, as saved."""
    meta: dict[str, Any]
    """The learner's JSON meta, as saved."""
    position: dict[str, Any] = field(default_factory=dict)
    """The caller's protocol position (e.g. ``{"experience": 3, "processed": [...]}``)."""
    model_sha256: str | None = None
    """sha256 of the model file the state belongs to, if the caller recorded one."""
    generation: int = 0
    """The generation number that was loaded."""
    fell_back: bool = False
    """True when the committed generation was damaged and an older intact one was loaded."""
    created: str = ""
    """UTC time the generation was written (ISO 8601)."""


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file (e.g. the model file, to bind a state to it)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _gen_name(generation: int) -> str:
    return f"gen-{generation:08d}"


def _pointer_check(body: str) -> str:
    return hashlib.sha256(body.encode()).hexdigest()[:16]


def pointer_line(generation: int, manifest_sha256: str) -> bytes:
    """The content of ``CURRENT`` committing ``generation`` whose manifest has ``manifest_sha256``."""
    body = f"{_gen_name(generation)} {manifest_sha256}"
    return f"{body} {_pointer_check(body)}\n".encode()


def _canonical(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def _reject_constant(name: str) -> None:
    raise ValueError(f"non-finite number {name} in JSON")


def _parse_json(data: bytes) -> Any:
    return json.loads(data.decode("utf-8"), parse_constant=_reject_constant)


class StateStore:
    """Generations of the learner state in one directory (see the module docstring for the layout).

    ``keep`` is the number of generations left after a save: the new one plus the ``keep - 1``
    newest older committed ones (at least the previous good one, so ``keep >= 2``).
    """

    def __init__(self, directory: str | os.PathLike, keep: int = 2) -> None:
        if keep < 2:
            raise ValueError(f"keep must be >= 2 (the new generation and the previous good one), got {keep}")
        self.directory = Path(directory)
        self.keep = int(keep)
        self._good: int | None = None  # last generation this store loaded or wrote (known intact)

    # -- inspection ----------------------------------------------------------------------------
    def generations(self) -> list[int]:
        """Numbers of the ``gen-N`` folders present (committed or not, intact or not), ascending."""
        if not self.directory.is_dir():
            return []
        found = (_GEN_RE.fullmatch(p.name) for p in self.directory.iterdir())
        return sorted(int(m.group(1)) for m in found if m)

    def current_generation(self) -> int | None:
        """The generation ``CURRENT`` names, or None when it is missing or unreadable."""
        pointer = self._read_current()
        return None if pointer is None else pointer[0]

    def _read_current(self) -> tuple[int, str] | None:
        """``(generation, manifest self_sha256)`` from ``CURRENT``, or None if missing or damaged."""
        try:
            text = (self.directory / CURRENT_FILE).read_bytes()[:256].decode("ascii")
        except (OSError, UnicodeDecodeError):
            return None
        match = _CURRENT_RE.fullmatch(text)
        if not match or _pointer_check(match.group(1)) != match.group(4):
            return None
        return int(match.group(2)[len("gen-") :]), match.group(3)

    def exists(self) -> bool:
        """True when the directory holds a state (a ``CURRENT`` pointer or any generation)."""
        return (self.directory / CURRENT_FILE).exists() or bool(self.generations())

    def verify(self, generation: int) -> None:
        """Check one generation's manifest and checksums; raises :class:`StateCorruptError`."""
        self._read_generation(generation)

    # -- save ----------------------------------------------------------------------------------
    def save(
        self,
        arrays: Mapping[str, np.ndarray],
        meta: Mapping[str, Any],
        *,
        position: Mapping[str, Any] | None = None,
        model_sha256: str | None = None,
    ) -> int:
        """Write a new generation atomically and commit it; returns its number.

        Raises :class:`StateError` (before touching the disk) for arrays or meta that cannot be
        stored, :class:`StateVersionError` when the committed state is from a newer bnncl, and
        :class:`StateWriteError` when writing fails (disk full, I/O error); in every case the
        previously committed state is left as it was.
        """
        files = self._serialize(arrays, meta, position, model_sha256)
        try:
            atomic.makedirs(self.directory)
        except OSError as exc:
            raise self._write_error(exc) from None
        with self._locked():
            old = self.current_generation()
            if old is not None:
                self._refuse_newer(old)
            else:  # the first commit: the folder itself (made by anyone) must be durable in its parent
                self._sync_parent()
            new = max([old or 0, *self.generations(), *self._temp_generations()]) + 1
            try:
                self._write_generation(new, files)
            except StateWriteError as exc:  # a full disk: make the room this save frees anyway, retry once
                if not (exc.disk_full and self._prune_before_write(new, old)):
                    raise
                self._write_generation(new, files)
            self._prune(new, old)
        self._good = new
        return new

    def _serialize(
        self,
        arrays: Mapping[str, np.ndarray],
        meta: Mapping[str, Any],
        position: Mapping[str, Any] | None,
        model_sha256: str | None,
    ) -> dict[str, bytes]:
        where = self.directory
        if not isinstance(meta, Mapping):
            raise StateError(f"{where}: state meta must be a dict, got {type(meta).__name__}")
        if model_sha256 is not None and not isinstance(model_sha256, str):
            raise StateError(f"{where}: model_sha256 must be a hex string or None, got {type(model_sha256).__name__}")
        bad = [k for k, v in arrays.items() if not isinstance(k, str) or not isinstance(v, np.ndarray)]
        if bad:
            raise StateError(f"{where}: state arrays must map names to NumPy arrays; bad entries {bad[:5]}")
        try:
            blob = safetensors.numpy.save({k: np.ascontiguousarray(v) for k, v in arrays.items()})
        except Exception as exc:  # safetensors rejects e.g. object or string dtypes
            raise StateError(f"{where}: state arrays cannot be stored as safetensors ({exc})") from None
        doc = {"learner": dict(meta), "position": dict(position or {}), "model_sha256": model_sha256}
        try:
            meta_bytes = json.dumps(doc, sort_keys=True, indent=1, allow_nan=False).encode()
        except (TypeError, ValueError) as exc:
            raise StateError(f"{where}: state meta is not JSON-able ({exc})") from None
        return {ARRAYS_FILE: blob, META_FILE: meta_bytes}

    def _manifest(self, generation: int, files: Mapping[str, bytes]) -> tuple[bytes, str]:
        body: dict[str, Any] = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "generation": generation,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "files": {
                name: {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)} for name, data in files.items()
            },
        }
        body["self_sha256"] = hashlib.sha256(_canonical(body)).hexdigest()
        return json.dumps(body, sort_keys=True, indent=1).encode(), body["self_sha256"]

    def _write_generation(self, generation: int, files: Mapping[str, bytes]) -> None:
        """Temp folder -> files (fsync) -> manifest last -> fsync folder -> rename -> CURRENT."""
        tmp = self.directory / f"{_TMP_PREFIX}{generation:08d}"
        final = self.directory / _gen_name(generation)
        try:
            atomic.rmtree(tmp, ignore_errors=True)
            atomic.mkdir(tmp)
            for name, data in files.items():
                write_new_file(tmp / name, data)
            manifest, manifest_sha = self._manifest(generation, files)
            write_new_file(tmp / MANIFEST_FILE, manifest)
            fsync_dir(tmp)
            atomic.rename(tmp, final)
            fsync_dir(self.directory)
        except OSError as exc:
            atomic.rmtree(tmp, ignore_errors=True)
            atomic.rmtree(final, ignore_errors=True)
            raise self._write_error(exc) from None
        try:
            replace_file(self.directory / CURRENT_FILE, pointer_line(generation, manifest_sha))
        except OSError as exc:
            if self.current_generation() == generation:  # renamed in place; only the final fsync failed
                warnings.warn(
                    f"{self.directory}: committed {_gen_name(generation)} but could not fsync it ({exc})", stacklevel=2
                )
                return
            atomic.rmtree(final, ignore_errors=True)
            raise self._write_error(exc) from None

    def _sync_parent(self) -> None:
        try:
            fsync_dir(self.directory.resolve().parent)
        except OSError as exc:
            raise self._write_error(exc) from None

    def _write_error(self, exc: OSError) -> StateWriteError:
        full = exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
        reason = "disk full" if full else (exc.strerror or str(exc))
        error = StateWriteError(f"{self.directory}: could not write the state ({reason}); the previous state is kept")
        error.disk_full = full
        return error

    def _refuse_newer(self, generation: int) -> None:
        """A committed state from a newer bnncl must not be pruned by an older one."""
        try:
            self._read_manifest(self.directory / _gen_name(generation), generation)
        except StateVersionError:
            raise
        except StateCorruptError:
            pass

    def _temp_generations(self) -> list[int]:
        names = (p.name[len(_TMP_PREFIX) :] for p in self.directory.iterdir() if p.name.startswith(_TMP_PREFIX))
        return [int(n) for n in names if n.isdigit()]

    def _keep(self, new: int, old: int | None) -> set[int]:
        """The generations left after saving ``new``: it and the ``keep - 1`` newest older committed
        ones, the known-good one (the last loaded or written) first."""
        previous = self._good if self._good is not None and self._good != new else old
        limit = old if old is not None else new - 1  # without CURRENT, every older one may be the good one
        committed_old = sorted((g for g in self.generations() if g <= limit), reverse=True)
        keep = {new}
        if previous is not None and previous in committed_old:
            keep.add(previous)
        for g in committed_old:
            if len(keep) >= self.keep:
                break
            keep.add(g)
        return keep

    def _remove_except(self, keep: set[int]) -> bool:
        """Rename every other generation to ``.del-gen-*`` (atomic), fsync, then delete them and any
        leftover temp folder; a crash mid-delete never leaves a half ``gen-N``. True if any was there."""
        doomed = [g for g in self.generations() if g not in keep]
        for g in doomed:
            atomic.rename(self.directory / _gen_name(g), self.directory / f"{_TRASH_PREFIX}{g:08d}")
        if doomed:
            fsync_dir(self.directory)
        leftovers = [p for p in self.directory.iterdir() if p.name.startswith((_TMP_PREFIX, _TRASH_PREFIX))]
        for path in leftovers:
            atomic.rmtree(path)
        return bool(leftovers)

    def _prune(self, new: int, old: int | None) -> None:
        """Remove all but the generations :meth:`_keep` names (after ``new`` is committed)."""
        try:
            self._remove_except(self._keep(new, old))
        except OSError as exc:  # the new state is committed; leftovers go at the next save
            warnings.warn(f"{self.directory}: could not prune old generations ({exc})", stacklevel=2)

    def _prune_before_write(self, new: int, old: int | None) -> bool:
        """On a full disk, before ``new`` is written: remove what saving it would prune anyway (the
        committed state and the ``keep - 2`` generations before it stay). Only when the generation
        kept as the state is known intact (loaded or written by this store, or verified now): then
        a failed retry still leaves it. True if room was made."""
        good = self._good if self._good is not None else old
        keep = self._keep(new, old) - {new}
        if good is None or good not in keep:
            return False
        try:
            if good != self._good:
                self.verify(good)
            return self._remove_except(keep)
        except (OSError, StateError):
            return False

    @contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            import fcntl
        except ImportError:  # not POSIX: single writer assumed
            yield
            return
        try:
            fd = os.open(self.directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise self._write_error(exc) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    # -- load ----------------------------------------------------------------------------------
    def load(self, *, model_sha256: str | None = None) -> LoadedState:
        """Load the committed generation (or, if it is damaged, the newest older intact one).

        Raises :class:`NoStateError` for a missing or empty directory, :class:`StateVersionError`
        for a state from a newer bnncl, :class:`StateCorruptError` when no generation is intact,
        and :class:`StateMismatchError` when ``model_sha256`` is given and differs from the one the
        state recorded. A fallback to an older generation emits a :class:`UserWarning`.
        """
        where = self.directory
        if not where.exists():
            raise NoStateError(f"{where}: no state yet (no such directory)")
        if not where.is_dir():
            raise StateError(f"{where}: not a directory (expected a state directory)")
        try:
            gens = self.generations()
        except OSError as exc:
            raise StateError(f"{where}: cannot read the state directory ({exc.strerror or exc})") from None
        pointer = self._read_current()
        current = None if pointer is None else pointer[0]
        has_pointer = (where / CURRENT_FILE).exists()
        if not has_pointer and not gens:
            raise NoStateError(f"{where}: no state yet (empty state directory)")
        if current is not None:
            candidates = [current] + [g for g in reversed(gens) if g < current]
        else:
            candidates = list(reversed(gens))
        failures: list[str] = [] if current is not None else [f"{CURRENT_FILE} missing or unreadable"]
        for g in candidates:
            try:
                state = self._read_generation(g, pointer[1] if pointer and g == current else None)
            except StateCorruptError as exc:
                failures.append(str(exc))
                continue
            if failures:
                warnings.warn(f"{where}: loaded older intact {_gen_name(g)} ({'; '.join(failures)})", stacklevel=2)
                state = replace(state, fell_back=True)
            self._check_model(state, model_sha256)
            self._good = g
            return state
        detail = "; ".join(failures) or "no generations"
        raise StateCorruptError(f"{where}: no intact state generation ({detail})")

    def _check_model(self, state: LoadedState, model_sha256: str | None) -> None:
        if model_sha256 is not None and state.model_sha256 is not None and model_sha256 != state.model_sha256:
            raise StateMismatchError(
                f"{self.directory}: state belongs to model sha256 {state.model_sha256[:12]}..., "
                f"not to this model ({model_sha256[:12]}...)"
            )

    def _read_manifest(self, gdir: Path, generation: int, expected_sha: str | None = None) -> dict[str, Any]:
        def bad(reason: str) -> StateCorruptError:
            return StateCorruptError(f"{gdir.name}: {reason}")

        path = gdir / MANIFEST_FILE
        try:
            with open(path, "rb") as fh:
                raw = fh.read(_MAX_MANIFEST_BYTES + 1)
        except OSError:
            raise bad(f"{MANIFEST_FILE} missing or unreadable") from None
        if len(raw) > _MAX_MANIFEST_BYTES:
            raise bad(f"{MANIFEST_FILE} too large")
        try:
            body = _parse_json(raw)
        except (ValueError, RecursionError):
            raise bad(f"{MANIFEST_FILE} is not valid JSON") from None
        if not isinstance(body, dict) or not isinstance(body.get("self_sha256"), str):
            raise bad(f"{MANIFEST_FILE} has no self checksum")
        claimed = body.pop("self_sha256")
        try:
            actual = hashlib.sha256(_canonical(body)).hexdigest()
        except (TypeError, ValueError):
            actual = ""
        if actual != claimed:
            raise bad(f"{MANIFEST_FILE} checksum mismatch")
        if expected_sha is not None and claimed != expected_sha:
            raise bad(f"{MANIFEST_FILE} is not the one {CURRENT_FILE} committed")
        if body.get("format") != FORMAT:
            raise bad(f"format {body.get('format')!r}, expected {FORMAT!r}")
        version = body.get("format_version")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise bad(f"invalid format_version {version!r}")
        if version > FORMAT_VERSION:
            raise StateVersionError(
                f"{self.directory}: state format version {version} is newer than this bnncl's {FORMAT_VERSION}; "
                "upgrade bnncl (the state was left as it is)"
            )
        if body.get("generation") != generation:
            raise bad(f"manifest names generation {body.get('generation')!r}")
        files = body.get("files")
        if not isinstance(files, dict) or sorted(files) != sorted([ARRAYS_FILE, META_FILE]):
            raise bad(f"manifest must list {ARRAYS_FILE} and {META_FILE}")
        for name, entry in files.items():
            if not (
                isinstance(entry, dict)
                and isinstance(entry.get("sha256"), str)
                and isinstance(entry.get("bytes"), int)
                and not isinstance(entry.get("bytes"), bool)
            ):
                raise bad(f"manifest entry for {name} is invalid")
        return body

    def _read_file(self, gdir: Path, name: str, entry: Mapping[str, Any]) -> bytes:
        try:
            data = (gdir / name).read_bytes()
        except OSError:
            raise StateCorruptError(f"{gdir.name}: {name} missing or unreadable") from None
        if len(data) != entry["bytes"] or hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise StateCorruptError(f"{gdir.name}: {name} checksum mismatch")
        return data

    def _read_generation(self, generation: int, manifest_sha: str | None = None) -> LoadedState:
        gdir = self.directory / _gen_name(generation)
        if not gdir.is_dir():
            raise StateCorruptError(f"{gdir.name}: missing")
        manifest = self._read_manifest(gdir, generation, manifest_sha)
        blob = self._read_file(gdir, ARRAYS_FILE, manifest["files"][ARRAYS_FILE])
        meta_bytes = self._read_file(gdir, META_FILE, manifest["files"][META_FILE])
        try:
            arrays = safetensors.numpy.load(blob)
        except Exception as exc:  # checksummed bytes the parser rejects: not a state we wrote
            raise StateCorruptError(f"{gdir.name}: {ARRAYS_FILE} unreadable ({type(exc).__name__})") from None
        try:
            doc = _parse_json(meta_bytes)
        except (ValueError, RecursionError):
            raise StateCorruptError(f"{gdir.name}: {META_FILE} is not valid JSON") from None
        if not (
            isinstance(doc, dict)
            and isinstance(doc.get("learner"), dict)
            and isinstance(doc.get("position"), dict)
            and (doc.get("model_sha256") is None or isinstance(doc.get("model_sha256"), str))
        ):
            raise StateCorruptError(f"{gdir.name}: {META_FILE} lacks learner/position/model_sha256")
        return LoadedState(
            arrays=dict(arrays),
            meta=doc["learner"],
            position=doc["position"],
            model_sha256=doc.get("model_sha256"),
            generation=generation,
            created=str(manifest.get("created", "")),
        )
