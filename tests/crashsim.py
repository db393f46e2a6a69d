"""A power-loss crash simulator for bnncl's durable writes (after ALICE, Pillai et al., OSDI 2014, and
CrashMonkey, Mohan et al., OSDI 2018; SQLite's crash tests work the same way at the VFS level).

Every durable operation of bnncl goes through :mod:`bnncl.atomic`. A :class:`Recorder` installed as
its hook logs them (create, write, fsync, fsync_dir, mkdir, rename, unlink, rmdir) under one root
folder, on top of a snapshot of that folder taken when recording starts (all of it durable).

:func:`crash_points` replays the log on an in-memory model of a file system that keeps, per file,
the durable content and the writes not yet fsync'ed, and per directory the durable entries; the
directory operations not yet made durable by an fsync of their directory are pending (a rename
becomes durable with the directory of its new name; an operation also makes the earlier pending
operations on the same file or folder durable, as a journal would). A crash point is the state
after any prefix of the log. :func:`images` builds from it what a power cut may leave on disk:

- pending directory operations (creations, renames, removals) kept in any subset (all subsets when
  there are few, else none / all / every prefix / all but one / random ones), applied in order;
- pending writes of a file: all, none, a prefix torn at a 512 B or 4 KiB boundary whose rest is
  missing, zeros or garbage, or random 4 KiB blocks lost (zeros in their place);
- combinations of both, deduplicated by content.

``lie=N`` makes the last N syncs before the crash point not reach the disk (a storage whose
volatile cache acknowledges fsync early): then acknowledged commits may be lost, and the only
promise left is that no partial state is accepted.

:func:`explore` materialises each distinct image in a temp folder and runs a check on it; it counts
the images, the distinct outcomes the check reports, and the violations (checks that raised).
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

from bnncl import atomic

Tree = dict[str, "bytes | None"]
"""A folder's content: relative path -> file bytes, or None for a directory ("" is the root)."""

SYNCS = ("fsync", "fsync_dir")


def snapshot(root: Path) -> Tree:
    """Every directory and regular file under ``root`` (symbolic links and others are skipped)."""
    tree: Tree = {"": None}
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        rel = "" if rel == "." else rel
        for d in dirnames:
            if not os.path.islink(os.path.join(dirpath, d)):
                tree[os.path.join(rel, d)] = None
        for f in filenames:
            full = os.path.join(dirpath, f)
            if os.path.isfile(full) and not os.path.islink(full):
                tree[os.path.join(rel, f)] = Path(full).read_bytes()
    return tree


def materialise(tree: Tree, dest: Path) -> None:
    """Write ``tree`` into the (new or empty) folder ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    for rel in sorted(tree):
        if rel and tree[rel] is None:
            (dest / rel).mkdir(parents=True, exist_ok=True)
    for rel, data in tree.items():
        if data is not None:
            (dest / rel).write_bytes(data)


def tree_digest(tree: Tree) -> str:
    h = hashlib.sha256()
    for rel in sorted(tree):
        data = tree[rel]
        h.update(rel.encode() + (b"/" if data is None else b"=" + hashlib.sha256(data).digest()) + b"\0")
    return h.hexdigest()


# -- recording -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Op:
    """One recorded operation (paths relative to the root)."""

    kind: str
    path: str
    dst: str | None = None
    data: bytes | None = None


@dataclass
class Recorder:
    """Logs bnncl's durable operations under ``root`` (install with :meth:`recording`)."""

    root: Path
    initial: Tree = field(default_factory=dict)
    ops: list[Op] = field(default_factory=list)
    marks: list[tuple[int, str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.root = Path(os.path.abspath(self.root))
        self.initial = snapshot(self.root)

    def _rel(self, path: str) -> str | None:
        full = os.path.abspath(path)
        if full == str(self.root):
            return ""
        if not full.startswith(str(self.root) + os.sep):
            return None
        return os.path.relpath(full, self.root)

    def __call__(self, kind: str, path: str, dst: str | None, data: bytes | None) -> None:
        rel = self._rel(path)
        rel_dst = None if dst is None else self._rel(dst)
        if rel is None or (dst is not None and rel_dst is None):
            return
        self.ops.append(Op(kind, rel, rel_dst, data))

    def mark(self, label: str, value: Any = None) -> None:
        """Note an event of the program (e.g. a commit acknowledged) at the current point of the log."""
        self.marks.append((len(self.ops), label, value))

    @contextmanager
    def recording(self) -> Iterator[Recorder]:
        previous = atomic.set_hook(self)
        try:
            yield self
        finally:
            atomic.set_hook(previous)


# -- the file-system model -------------------------------------------------------------------------
@dataclass
class Pending:
    """A directory operation not yet durable."""

    index: int
    kind: str  # link, unlink, rename
    home: int  # the directory whose fsync makes it durable
    ino: int
    src: tuple[int, str] | None = None  # (dir ino, name) removed
    dst: tuple[int, str] | None = None  # (dir ino, name) added


@dataclass
class CrashPoint:
    """What the disk holds durably after ``k`` operations, and what may or may not have reached it."""

    k: int
    root_ino: int
    dirs: dict[int, dict[str, int]]  # durable entries of every directory inode
    files: dict[int, bytes]  # durable content of every file inode
    meta: list[Pending]  # pending directory operations, in program order
    writes: dict[int, list[tuple[int, bytes]]]  # pending (offset, data) writes per file inode

    def marks(self, recorder: Recorder) -> list[tuple[str, Any]]:
        """The program's marks made before this point."""
        return [(label, value) for at, label, value in recorder.marks if at <= self.k]


class Model:
    """Replays a recorded log; :meth:`point` gives the durable state and the pending operations."""

    def __init__(self, initial: Tree) -> None:
        self.next_ino = 0
        self.is_dir: dict[int, bool] = {}
        self.vol: dict[int, dict[str, int]] = {}  # volatile entries (what the program sees)
        self.dur: dict[int, dict[str, int]] = {}
        self.content: dict[int, bytes] = {}  # volatile content
        self.durable: dict[int, bytes] = {}
        self.writes: dict[int, list[tuple[int, bytes]]] = {}
        self.meta: list[Pending] = []
        self.root = self._new(True)
        for rel in sorted(initial, key=lambda r: (r.count(os.sep), r)):
            if not rel:
                continue
            parent, name = self._lookup_parent(rel)
            ino = self._new(initial[rel] is None)
            if initial[rel] is not None:
                self.content[ino] = self.durable[ino] = initial[rel]
            self.vol[parent][name] = self.dur[parent][name] = ino

    def _new(self, is_dir: bool) -> int:
        ino, self.next_ino = self.next_ino, self.next_ino + 1
        self.is_dir[ino] = is_dir
        if is_dir:
            self.vol[ino], self.dur[ino] = {}, {}
        else:
            self.content[ino] = self.durable[ino] = b""
            self.writes[ino] = []
        return ino

    def _resolve(self, rel: str) -> int:
        ino = self.root
        for part in Path(rel).parts if rel else ():
            ino = self.vol[ino][part]
        return ino

    def _lookup_parent(self, rel: str) -> tuple[int, str]:
        parent, name = os.path.split(rel)
        return self._resolve(parent), name

    def apply(self, index: int, op: Op, honest: bool = True) -> None:
        """Apply one operation; ``honest=False``: its syncs do nothing (a lying write cache)."""
        kind = op.kind
        if kind in ("create", "mkdir"):
            parent, name = self._lookup_parent(op.path)
            ino = self._new(kind == "mkdir")
            self.vol[parent][name] = ino
            self.meta.append(Pending(index, "link", parent, ino, dst=(parent, name)))
        elif kind == "write":
            ino = self._resolve(op.path)
            offset = len(self.content[ino])
            self.content[ino] += op.data or b""
            self.writes[ino].append((offset, op.data or b""))
        elif kind in ("unlink", "rmdir"):
            parent, name = self._lookup_parent(op.path)
            ino = self.vol[parent].pop(name)
            self.meta.append(Pending(index, "unlink", parent, ino, src=(parent, name)))
        elif kind == "rename":
            sparent, sname = self._lookup_parent(op.path)
            dparent, dname = self._lookup_parent(op.dst or "")
            ino = self.vol[sparent].pop(sname)
            self.vol[dparent][dname] = ino
            self.meta.append(Pending(index, "rename", dparent, ino, src=(sparent, sname), dst=(dparent, dname)))
        elif kind == "fsync" and honest:
            ino = self._resolve(op.path)
            self.durable[ino] = self.content[ino]
            self.writes[ino] = []
        elif kind == "fsync_dir" and honest:
            self._persist(self._resolve(op.path))

    def _persist(self, directory: int) -> None:
        """Make the pending operations of ``directory`` durable, with the earlier ones on the same inodes."""
        chosen = {i for i, p in enumerate(self.meta) if p.home == directory}
        for i in sorted(chosen, reverse=True):
            inos = {self.meta[i].ino}
            for j in range(i - 1, -1, -1):
                if self.meta[j].ino in inos:
                    chosen.add(j)
        for i in sorted(chosen):
            _apply_meta(self.dur, self.meta[i])
        self.meta = [p for i, p in enumerate(self.meta) if i not in chosen]

    def point(self, k: int) -> CrashPoint:
        return CrashPoint(
            k, self.root, {d: dict(e) for d, e in self.dur.items()}, dict(self.durable), list(self.meta),
            {ino: list(w) for ino, w in self.writes.items() if w},
        )


def _apply_meta(entries: dict[int, dict[str, int]], p: Pending) -> None:
    if p.src is not None and entries[p.src[0]].get(p.src[1]) == p.ino:
        del entries[p.src[0]][p.src[1]]
    if p.dst is not None:
        entries[p.dst[0]][p.dst[1]] = p.ino


def crash_points(recorder: Recorder, lie: int = 0) -> Iterator[CrashPoint]:
    """The state after every prefix of the log (``lie``: the last ``lie`` syncs before it were lost)."""
    ops = recorder.ops
    if not lie:
        model = Model(recorder.initial)
        yield model.point(0)
        for i, op in enumerate(ops):
            model.apply(i, op)
            yield model.point(i + 1)
        return
    syncs = [i for i, op in enumerate(ops) if op.kind in SYNCS]
    for k in range(len(ops) + 1):
        before = [i for i in syncs if i < k]
        ignored = set(before[-lie:])
        model = Model(recorder.initial)
        for i in range(k):
            model.apply(i, ops[i], honest=i not in ignored)
        yield model.point(k)


# -- crash images ----------------------------------------------------------------------------------
Variant = tuple  # ("none",), ("all",), ("torn", cut, fill), ("holes", seed)


def _variants(total: int, max_cuts: int = 32) -> list[Variant]:
    """Ways the pending writes (``total`` bytes) may have reached the disk: none, all, torn at a 512 B
    or 4 KiB boundary (up to ``max_cuts`` boundaries, spread evenly) with the rest missing, zeros or
    garbage, or 4 KiB blocks lost at random."""
    out: list[Variant] = [("none",), ("all",)]
    cuts = sorted({c for block in (512, 4096) for c in range(0, total, block)})
    if len(cuts) > max_cuts:
        cuts = [cuts[i * len(cuts) // max_cuts] for i in range(max_cuts)]
    for cut in cuts:
        out += [("torn", cut, "cut"), ("torn", cut, "zeros"), ("torn", cut, "garbage")]
    if total > 4096:
        out += [("holes", seed) for seed in range(4)]
    return out


def _file_content(durable: bytes, writes: list[tuple[int, bytes]], variant: Variant) -> bytes:
    if variant[0] == "none":
        return durable
    buf = bytearray(durable)
    stream = b"".join(d for _, d in writes)
    start = writes[0][0]
    if variant[0] == "all":
        piece = stream
    elif variant[0] == "torn":
        _, cut, fill = variant
        rest = len(stream) - cut
        tail = b"" if fill == "cut" else bytes(rest) if fill == "zeros" else random.Random(cut).randbytes(rest)
        piece = stream[:cut] + tail
    else:
        rng = random.Random(variant[1])
        piece = b"".join(
            stream[i:i + 4096] if rng.random() < 0.5 else bytes(len(stream[i:i + 4096]))
            for i in range(0, len(stream), 4096)
        )
    if len(buf) < start:
        buf.extend(bytes(start - len(buf)))
    buf[start:start + len(piece)] = piece
    return bytes(buf)


def build(point: CrashPoint, keep: set[int], variants: dict[int, Variant]) -> Tree:
    """The image with pending directory operations ``keep`` (indices into ``point.meta``) applied and
    each file's pending writes resolved by ``variants`` (default: none of them reached the disk)."""
    entries = {d: dict(e) for d, e in point.dirs.items()}
    for i, p in enumerate(point.meta):
        if i in keep:
            _apply_meta(entries, p)
    tree: Tree = {"": None}
    stack = [("", point.root_ino)]
    seen = {point.root_ino}
    while stack:
        rel, ino = stack.pop()
        for name, child in entries[ino].items():
            path = os.path.join(rel, name)
            if child in entries:
                if child not in seen:  # a folder reachable twice is listed once
                    seen.add(child)
                    tree[path] = None
                    stack.append((path, child))
            else:
                writes = point.writes.get(child)
                variant = variants.get(child, ("none",))
                tree[path] = point.files[child] if not writes else _file_content(point.files[child], writes, variant)
    return tree


def _meta_choices(n: int, rng: random.Random, extra: int) -> list[set[int]]:
    if n <= 4:
        return [set(c) for r in range(n + 1) for c in combinations(range(n), r)]
    out = [set(range(p)) for p in range(n + 1)]
    out += [set(range(n)) - {i} for i in range(n)]
    out += [{i for i in range(n) if rng.random() < 0.5} for _ in range(extra)]
    return out


def images(point: CrashPoint, rng: random.Random, limit: int = 60) -> list[tuple[str, Tree]]:
    """Crash images of one point: (how it was built, content), at most ``limit`` (a seeded sample)."""
    n = len(point.meta)
    full = set(range(n))
    inos = sorted(point.writes)
    totals = {ino: sum(len(d) for _, d in point.writes[ino]) for ino in inos}
    every = {ino: ("all",) for ino in inos}
    plans: list[tuple[str, set[int], dict[int, Variant]]] = []
    for keep in _meta_choices(n, rng, 8):
        plans.append((f"meta {sorted(keep)}", keep, every))
        if inos:
            plans.append((f"meta {sorted(keep)}, no data", keep, {}))
    for ino in inos:
        for v in _variants(totals[ino]):
            plans.append((f"meta all, file {ino} {v}", full, {**every, ino: v}))
    for _ in range(10 if inos else 0):
        keep = {i for i in range(n) if rng.random() < 0.5}
        variants = {ino: rng.choice(_variants(totals[ino])) for ino in inos}
        plans.append((f"random meta {sorted(keep)}, {variants}", keep, variants))
    head, rest = plans[:4], plans[4:]
    if len(plans) > limit:
        rest = rng.sample(rest, limit - len(head))
    return [(how, build(point, keep, variants)) for how, keep, variants in head + rest]


# -- exploring -------------------------------------------------------------------------------------
@dataclass
class Exploration:
    """What :func:`explore` found."""

    points: int = 0
    built: int = 0
    explored: int = 0
    outcomes: Counter = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (f"{self.points} crash points, {self.built} images built, {self.explored} distinct explored, "
                f"{len(self.outcomes)} distinct outcomes, {len(self.violations)} violations")


Check = Callable[[Path, CrashPoint], Any]


def explore(recorder: Recorder, check: Check, *, seed: int = 0, per_point: int = 60, lie: int = 0,
            max_images: int | None = None, points: Callable[[CrashPoint], bool] | None = None,
            seen: set[str] | None = None, result: Exploration | None = None) -> Exploration:
    """Run ``check(folder, point)`` on every distinct crash image; it returns an outcome (any hashable)
    or raises on a violation. Images are distinct by content and by the program's marks before their
    crash point (the same bytes after an acknowledged commit are another case than before it).
    ``max_images`` caps the distinct images checked (spread over the log)."""
    result = result or Exploration()
    seen = set() if seen is None else seen
    rng = random.Random(seed)
    todo: list[tuple[CrashPoint, str, Tree]] = []
    for point in crash_points(recorder, lie):
        if points is not None and not points(point):
            continue
        result.points += 1
        for how, tree in images(point, rng, per_point):
            result.built += 1
            digest = tree_digest(tree) + repr(point.marks(recorder))  # the same bytes may be judged differently
            if digest in seen:
                continue
            seen.add(digest)
            todo.append((point, how, tree))
    if max_images is not None and len(todo) > max_images:
        todo = [todo[i * len(todo) // max_images] for i in range(max_images)]
    with tempfile.TemporaryDirectory(prefix="crashsim-") as tmp:
        for n, (point, how, tree) in enumerate(todo):
            folder = Path(tmp) / f"img{n}"
            materialise(tree, folder)
            try:
                result.outcomes[check(folder, point)] += 1
            except AssertionError as exc:
                result.violations.append(f"after op {point.k} ({_describe(recorder, point.k)}), {how}: {exc}")
            result.explored += 1
            shutil.rmtree(folder, ignore_errors=True)
    return result


def _describe(recorder: Recorder, k: int) -> str:
    if k == 0:
        return "start"
    op = recorder.ops[k - 1]
    return f"{op.kind} {op.path}" + (f" -> {op.dst}" if op.dst else "")
