"""``bnncl learn``: the on-device loop. Scan the incoming folder, learn what arrived, commit, move it out.

One step (:meth:`LearnLoop.step`):

1. scan ``INCOMING/<label>/<image>`` (order and rules: :mod:`bnncl.service.inbox`); take up to
   ``--max-images`` usable files (0: all). A file that cannot be decoded, has no label folder, or
   names a new class when the head is full is *rejected*: moved to the rejected folder with a
   ``.reason.txt`` beside it, with a warning. Rejecting changes no state. Entries never taken
   (links, FIFOs, deeper folders) get one warning each.
2. decode (resize policy of :func:`bnncl.data.imagefolder.decode_image`: converted to the model's
   channels, shorter side resized, centre crop), learn the batch as one experience, and commit the
   state together with the ids + sha256 of the batch's files (``position["last_files"]``);
3. record where the batch's files go (:mod:`bnncl.service.journal`, durable) and move them to the
   processed folder.

Crash safety: the commit (:class:`~bnncl.cl.state.StateStore`) is the only point where learning
becomes permanent. A kill or power cut before it: the files are still in ``INCOMING`` and the next
start learns them again from the last committed state, in the same order, with the same RNG states,
so it learns exactly what the killed run would have. After it: the next start finds files that the
committed state lists (same id and content) still in ``INCOMING`` and moves them without learning
them again. If the state loads an older generation than the one that learned files already moved
(its newest generation was damaged), the journal names those files and the start moves them back
into ``INCOMING`` to learn them again. A second ``bnncl learn`` on the same state directory is
refused (lock). SIGTERM / SIGINT stop the loop at the next safe point (:func:`stop_on_signals`).
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from bnncl import atomic
from bnncl.assets import resolve_model
from bnncl.cl.state import StateWriteError
from bnncl.errors import BnnclError, DataError
from bnncl.service import inbox
from bnncl.service.folders import read_item
from bnncl.service.journal import Journal
from bnncl.service.session import FREE_ROWS, LearnerSession
from bnncl.settings import add_arguments, given_settings

LOCK_NAME = "LEARNER.lock"
EXIT_ALL_REJECTED = 3
"""Exit status of ``bnncl learn --once`` when images were there but every one was rejected (0: learned
something or found nothing; 2: a usage or state error; 1: stdout closed)."""


def _holds(path: Path, rec: dict[str, Any]) -> bool:
    """True if ``path`` is a file with the size and sha256 that ``rec`` recorded."""
    try:
        data = path.read_bytes()
    except OSError:
        return False
    return len(data) == rec["bytes"] and inbox.digest(data) == rec["sha256"]


def _reason(exc: Exception, item: inbox.Item) -> str:
    return str(exc).removeprefix(f"{item.path}: ")


class LearnLoop:
    """The scan / learn / commit / move loop around a :class:`LearnerSession` (module docstring)."""

    def __init__(self, session: LearnerSession, incoming: Path, done: Path, rejected: Path, max_images: int = 0,
                 say: Callable[[str], None] = print, warn: Callable[[str], None] | None = None,
                 stop: Stop | None = None) -> None:
        self.session = session
        self.incoming = Path(incoming)
        self.done = Path(done)
        self.rejected = Path(rejected)
        self.max_images = int(max_images)
        self.say = say
        self.warn = warn or (lambda msg: print(f"warning: {msg}", file=sys.stderr))
        self._warned: set[Path] = set()  # entries never taken, warned about once
        self.rejected_count = 0  # images moved to (or left for) REJECTED in this run
        self.stop = stop if stop is not None else Stop()
        self.journal = Journal.load(session.store.directory, self.warn)

    def start(self) -> None:
        """What a (re)start does before the first step: relearn what experiences lost from the state
        had learned, and finish the moves of the committed experience."""
        self.relearn_lost()
        self.finish_committed()

    def finish_committed(self) -> int:
        """Move files the committed state already learned but that are still in ``INCOMING``."""
        pairs = []
        for rec in self.session.position.get("last_files", []):
            label, _, name = rec["id"].rpartition("/")
            item = inbox.Item(label, name, self.incoming / rec["id"])
            if _holds(item.path, rec):  # else moved before the crash (or removed by the user)
                pairs.append((item, rec))
        if pairs:
            self._move_learned(int(self.session.position["experience"]), pairs)
            self.say(f"moved {len(pairs)} file(s) learned before a restart to {self.done}")
        return len(pairs)

    def _copied(self, experience: int, rec: dict[str, Any]) -> bool:
        """True if the journal says where this file of ``experience`` went and it is there (a move
        across file systems cut short between the copy and the removal of the original)."""
        done = {f["id"]: f for f in self.journal.experiences.get(experience, [])}.get(rec["id"])
        return done is not None and _holds(self.done / done["moved_to"], rec)

    def _move_learned(self, experience: int, pairs: list[tuple[inbox.Item, dict[str, Any]]]) -> None:
        """Record where the files of the committed ``experience`` go (durably: the journal), then move them."""
        copied = [(item, rec) for item, rec in pairs if self._copied(experience, rec)]
        for item, _ in copied:
            inbox.remove(item)
        pairs = [(item, rec) for item, rec in pairs if (item, rec) not in copied]
        if not pairs:
            return
        targets = [inbox.target(item, self.done) for item, _ in pairs]
        self.journal.record(experience, [{**rec, "moved_to": to.relative_to(self.done).as_posix()}
                                         for (_, rec), to in zip(pairs, targets)])
        for (item, _), to in zip(pairs, targets):
            inbox.move(item, self.done, to=to)

    def relearn_lost(self) -> int:
        """Move back into ``INCOMING`` the files learned by experiences the state no longer holds (it
        fell back to an older generation, or an older backup was restored), to learn them again."""
        experience = int(self.session.position.get("experience", 0))
        lost = self.journal.after(experience)
        moved = sum(self._move_back(e, rec) for e, records in lost.items() for rec in records)
        self.journal.forget(lost)
        if moved:
            self.say(f"moved {moved} file(s) learned by experience {', '.join(map(str, lost))} back to "
                     f"{self.incoming} to learn them again (the state holds experience {experience}, "
                     f"generation {self.session.generation})")
        return moved

    def _move_back(self, experience: int, rec: dict[str, Any]) -> bool:
        label, _, name = rec["id"].rpartition("/")
        src = self.done / rec["moved_to"]
        if _holds(src, rec):
            inbox.move(inbox.Item(label, name, src), self.incoming)
            return True
        if _holds(self.incoming / rec["id"], rec):  # never moved, or moved back before a restart
            return False
        self.warn(f"{src}: learned by experience {experience}, which the state no longer holds, but it is not "
                  f"there any more; not learned again")
        return False

    def _reject(self, item: inbox.Item, reason: str) -> None:
        self.rejected_count += 1
        try:
            target = inbox.reject(item, self.rejected, reason)
        except OSError as exc:  # e.g. disk full: leave it where it is, try again at the next scan
            self.warn(f"{item.path}: skipped ({reason}); could not move it to {self.rejected} "
                      f"({exc.strerror or exc})")
            return
        self.warn(f"{item.path}: rejected, moved to {target} ({reason})")

    def _warn_skipped(self, skipped: inbox.Skipped) -> None:
        """One warning per entry the loop will never take (a link, a FIFO, a deeper folder ...)."""
        for path, why in skipped:
            if path not in self._warned:
                self._warned.add(path)
                self.warn(f"{path}: not taken: {why}; left where it is")

    def step(self) -> int:
        """Learn one experience from what is in ``INCOMING``; returns the number of images (0: none)."""
        s = self.session
        skipped: inbox.Skipped = []
        items = inbox.scan(self.incoming, exclude=(self.done, self.rejected), skipped=skipped)
        self._warn_skipped(skipped)
        images: list[np.ndarray] = []
        labels: list[str] = []
        files: list[dict[str, Any]] = []
        taken: list[inbox.Item] = []
        new_names: set[str] = set()
        for item in items:
            if self.max_images and len(taken) >= self.max_images:
                break
            if not item.label:
                self._reject(item, "not in a label folder (expected INCOMING/<label>/<image>)")
                continue
            if s.lookup(item.label) is None and item.label not in new_names:
                if len(s.classes) + len(new_names) >= s.capacity:
                    self._reject(item, f"new class {item.label!r} does not fit: the head holds {s.capacity} "
                                       f"classes and all are named")
                    continue
            try:
                arr, rec = read_item(item, s.image_shape)
            except DataError as exc:
                if not item.path.exists():
                    continue  # removed while we looked
                self._reject(item, _reason(exc, item))
                continue
            if s.lookup(item.label) is None:
                new_names.add(item.label)
            images.append(arr)
            labels.append(item.label)
            files.append(rec)
            taken.append(item)
        if not taken or self.stop:  # a stop asked for while decoding: nothing learned, nothing changed
            return 0
        t0 = time.perf_counter()
        gen = s.learn(np.stack(images), labels, files)
        self._move_learned(int(s.position["experience"]), list(zip(taken, files)))
        counts: dict[str, int] = {}
        for name in labels:
            counts[name] = counts.get(name, 0) + 1
        summary = ", ".join(f"{n} x{k}" for n, k in sorted(counts.items()))
        report = f"; {s.last_report.line()}" if s.last_report is not None else ""
        self.say(f"experience {s.position['experience']}: learned {len(taken)} image(s) ({summary}){report}; "
                 f"state generation {gen}; {time.perf_counter() - t0:.2f} s")
        return len(taken)

    def run(self, once: bool = False, poll: float = 5.0) -> int:
        """Step until ``INCOMING`` is empty (``once``) or forever; returns the images learned. Watching,
        a commit that fails for a full disk (or an I/O error) is a warning and retried at the next poll.
        A :attr:`stop` request ends it at the next safe point (between experiences, or while waiting)."""
        total = 0
        while not self.stop:
            try:
                n = self.step()
            except StateWriteError as exc:
                if once:
                    raise
                self.warn(f"{exc}; the files stay in {self.incoming}, retrying in {poll:g} s")
                n = 0
            total += n
            if n:
                continue
            if once:
                break
            self._wait(poll)
        return total

    def _wait(self, seconds: float) -> None:
        """Sleep ``seconds`` in naps of at most 0.25 s, so that a stop request ends the wait."""
        naps = max(1, math.ceil(seconds / 0.25))
        for _ in range(naps):
            if self.stop:
                return
            time.sleep(seconds / naps)


@contextmanager
def learner_lock(state_dir: Path) -> Iterator[None]:
    """Hold an exclusive, non-blocking lock on ``STATE/LEARNER.lock`` (released when the process dies)."""
    import fcntl

    try:
        atomic.makedirs(state_dir)  # durable in its parent before anything is committed in it
        fd = os.open(state_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise BnnclError(f"--state {state_dir}: cannot use it ({exc.strerror or exc})") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BnnclError(f"--state {state_dir}: another bnncl learn is running on it") from None
        yield
    finally:
        os.close(fd)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bnncl learn",
        description="Learn continually from labelled images dropped into a folder (INCOMING/<class>/<image>). "
                    "The first start deploys the model into --state; later starts resume from it.",
        epilog=f"exit status: 0 learned (or nothing to learn, or stopped by a signal at a safe point); "
               f"{EXIT_ALL_REJECTED} with --once when every image found was rejected (reasons in REJECTED); "
               f"2 a usage, model or state error; 1 stdout closed.")
    p.add_argument("--model", required=True, help="device model file (.bnn), or a shipped model's name "
                                                   "(fmnist-b5, cifar10-b5)")
    p.add_argument("--state", required=True, help="state directory (created at the first start)")
    p.add_argument("--incoming", required=True, help="folder of <class>/<image> files to learn")
    p.add_argument("--once", action="store_true", help="learn what is there, then exit (default: keep watching)")
    p.add_argument("--poll", type=float, default=5.0, help="seconds between scans when watching (default 5)")
    p.add_argument("--max-images", type=int, default=0, help="most images per experience (default 0: all)")
    p.add_argument("--done", help="where learned files go (default INCOMING/processed)")
    p.add_argument("--rejected", help="where unusable files go (default INCOMING/rejected)")
    p.add_argument("--base", help="ImageFolder of base-class images for the deployment (not needed for the "
                                  "shipped fmnist-b5 model)")
    p.add_argument("--threads", type=int, default=1, help="compute threads (default 1)")
    g = p.add_argument_group("deployment settings (fixed at the first start, kept in the state)")
    add_arguments(g)
    g.add_argument("--capacity", default=None, metavar="N",
                   help=f"head rows = most classes ever (default the model's class names + {FREE_ROWS} free rows); "
                        f"a larger value on an existing state grows it")
    return p


def settings_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The deployment settings given (name -> value); checked when :class:`Settings` is built."""
    out = given_settings(args)
    if args.capacity is not None:
        try:
            out["capacity"] = int(args.capacity)
        except ValueError:
            raise BnnclError(f"--capacity: expected an integer >= 1, got {args.capacity!r}") from None
    return out


class Stop:
    """A request to stop at the next safe point (set by SIGTERM / SIGINT, see :func:`stop_on_signals`)."""

    def __init__(self) -> None:
        self.reason: str | None = None

    def __bool__(self) -> bool:
        return self.reason is not None


@contextmanager
def stop_on_signals(stop: Stop) -> Iterator[None]:
    """While inside, SIGTERM and SIGINT set ``stop`` (the loop ends at its next safe point: between
    experiences, or while waiting); a second signal stops at once (KeyboardInterrupt), which the commit
    protocol survives like a kill. Outside the main thread signals cannot be caught: nothing changes."""
    def handler(signum: int, frame: Any) -> None:
        if stop:
            raise KeyboardInterrupt
        stop.reason = signal.Signals(signum).name

    try:
        previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    except ValueError:
        yield
        return
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def quiet_on_closed_pipe(run: Callable[[], int]) -> int:
    """``run()``; a closed stdout (``bnncl state show DIR | head -1``) ends it with exit code 1 and no
    traceback, as the Python docs advise for SIGPIPE (stdout then points at devnull for the exit flush)."""
    try:
        try:
            return run()
        finally:
            sys.stdout.flush()
    except BrokenPipeError:
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):  # stdout without a file descriptor (tests)
            pass
        return 1


@contextmanager
def one_line_warnings() -> Iterator[None]:
    """Show Python warnings (e.g. a state fallback) as ``warning: ...`` lines on stderr."""
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = lambda msg, *a, **k: print(f"warning: {msg}", file=sys.stderr)
        yield


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if hasattr(sys.stdout, "reconfigure"):  # a log or pipe gets each progress line as it happens
        sys.stdout.reconfigure(line_buffering=True)
    return quiet_on_closed_pipe(lambda: _main(args))


def _main(args: argparse.Namespace) -> int:
    stop = Stop()
    try:
        with one_line_warnings(), stop_on_signals(stop):
            return _learn(args, stop)
    except BrokenPipeError:  # stdout closed (bnncl learn | head): the state is committed; stop quietly
        raise
    except BnnclError as exc:
        print(f"bnncl learn: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # moving files: the state is committed, the next start finishes the moves
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"bnncl learn: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _open_session(args: argparse.Namespace, state: Path, existed: bool) -> LearnerSession:
    """Resume or deploy; a refused deployment leaves no state folder behind when it made it (``existed``
    False: the folder holds only the lock taken for this start)."""
    try:
        model = resolve_model(args.model, ".bnn")  # a path, or a shipped model's name
        return LearnerSession.open(model, state, settings_from_args(args), base=args.base, threads=args.threads)
    except BaseException:
        if not existed and state.is_dir() and {p.name for p in state.iterdir()} <= {LOCK_NAME}:
            atomic.rmtree(state, ignore_errors=True)
        raise


def _learn(args: argparse.Namespace, stop: Stop | None = None) -> int:
    incoming = Path(args.incoming)
    if not incoming.is_dir():
        raise BnnclError(f"--incoming {incoming}: no such directory")
    if args.poll <= 0 or args.max_images < 0 or args.threads < 1:
        raise BnnclError("--poll must be > 0, --max-images >= 0 and --threads >= 1")
    state = Path(args.state)
    existed = state.exists()
    with learner_lock(state):
        fresh = not (state / "CURRENT").exists() and not any(state.glob("gen-*"))
        session = _open_session(args, state, existed)
        if fresh:
            print(f"deployed {args.model} into {state}: {session.deployment_summary()}; "
                  f"state generation {session.generation}")
        elif session.fell_back:
            print(f"resumed from generation {session.generation} after the warning above")
        loop = LearnLoop(session, incoming, Path(args.done or incoming / "processed"),
                         Path(args.rejected or incoming / "rejected"), args.max_images, stop=stop)
        loop.start()
        total = loop.run(once=args.once, poll=args.poll)
        if loop.stop:
            print(f"stopped by {loop.stop.reason} at a safe point: state generation {session.generation} "
                  f"(experience {session.position['experience']}); {total} image(s) learned in this run")
        elif args.once:
            if total == 0 and loop.rejected_count:
                print(f"nothing learned: {loop.rejected_count} image(s) rejected (reasons beside them in "
                      f"{loop.rejected})", file=sys.stderr)
                return EXIT_ALL_REJECTED
            print("nothing new to learn" if total == 0 else f"learned {total} image(s); incoming folder is empty")
    return 0


if __name__ == "__main__":
    sys.exit(main())
