"""Every subject of a translate batch accounted for, through crashes, concurrency and interruption.

OUT/translate.json is merged, never overwritten: each update re-reads it under a file lock (`filelock`) and
replaces only the entries of the subjects this run made, so two runs into one folder both end listed. It is
written when the batch ends or is interrupted; a killed run's published subjects are unlisted and `--continue`
redoes them. A listed subject is complete when the checksums recorded with its entry still match its files
(`--continue` skips exactly those).
SIGINT and SIGTERM during the batch roll back the subject in progress (its files are staged and never
published, `fsutil.atomic_dir`) and the batch stops with every subject listed as done, skipped or not done.
"""

from __future__ import annotations

import errno
import json
import signal
import threading
from pathlib import Path

from filelock import FileLock

from phmdiff.fsutil import atomic_write_text, digest

LISTING = "translate.json"
LOCK = ".translate.json.lock"
EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}
# Write errors of the output disk: no subject is at fault and none would fare better, so the batch stops.
DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived while a subject was being translated (a BaseException, like KeyboardInterrupt,
    so that no per-subject handler mistakes it for that subject's failure)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class SignalGuard:
    """Within `with`, SIGINT and SIGTERM stop the batch: while `armed` (a subject in progress) the first one
    raises `Interrupted` there, otherwise it is recorded and the loop stops at the next subject. Further signals
    are recorded only, so the roll-back and the listing are never cut short. Off the main thread it does nothing.
    """

    def __init__(self):
        self.signum: int | None = None
        self.armed = False
        self._previous = {}

    def _handle(self, signum, frame) -> None:
        first = self.signum is None
        self.signum = self.signum or signum
        if first and self.armed:
            self.armed = False
            raise Interrupted(signum)

    def __enter__(self) -> SignalGuard:
        if threading.current_thread() is threading.main_thread():
            for sig in EXIT_CODES:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def checksums(out: Path, entry: dict) -> dict[str, str | None]:
    """The checksum of each output file of a translate.json entry, by its path relative to `out`."""
    rels = [entry.get(k) for k in ("prediction", "std", "ceiling")] + list(entry.get("samples") or [])
    return {rel: digest(out / rel) for rel in rels if isinstance(rel, str)}


def is_complete(out: Path, entry: dict) -> bool:
    """Whether an entry's files are all there with the checksums recorded when they were written."""
    recorded = entry.get("checksums")
    return isinstance(recorded, dict) and bool(recorded) and checksums(out, entry) == recorded


def read_listing(out: Path) -> dict | None:
    """OUT/translate.json as a dict, or None when missing or unreadable."""
    try:
        meta = json.loads((out / LISTING).read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def _key(item: dict, target) -> tuple:
    return item.get("subject"), item.get("target", target)


def merge_listing(out: Path, meta: dict) -> dict:
    """Write `meta` (this run's header, its entries, skipped and not-done subjects) into OUT/translate.json,
    merged under a file lock with what other runs listed there for the same target and sources: their subjects
    stay unless this run made the same (subject, target). Returns the merged content."""
    with FileLock(out / LOCK, timeout=600):
        old = read_listing(out) or {}
        merged = dict(meta)
        if (old.get("target"), old.get("sources")) == (meta.get("target"), meta.get("sources")):
            target = meta.get("target")
            done = {_key(e, target) for e in meta["subjects"]}
            mine = done | {_key(s, target) for s in meta["skipped"] + meta.get("not_done", [])}
            theirs_done = [e for e in old.get("subjects") or [] if isinstance(e, dict) and _key(e, target) not in mine]
            finished = done | {_key(e, target) for e in theirs_done}

            def still(items):
                return [s for s in items or [] if isinstance(s, dict) and _key(s, target) not in finished
                        and s.get("subject") not in {k[0] for k in mine}]

            merged["subjects"] = theirs_done + meta["subjects"]
            merged["skipped"] = still(old.get("skipped")) + meta["skipped"]
            merged["not_done"] = still(old.get("not_done")) + [s for s in meta.get("not_done", [])
                                                                 if _key(s, target) not in finished]
        if not merged.get("not_done"):
            merged.pop("not_done", None)
        atomic_write_text(out / LISTING, json.dumps(merged, indent=1))
        return merged
