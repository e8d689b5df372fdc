"""Atomic file output: a reader sees the old file or the whole new one, never half.

Every command that writes user-visible outputs (NIfTI volumes, shards,
manifests, checkpoints, reports) goes through these helpers, so a crash,
a full disk or Ctrl-C mid-write leaves the previous state intact.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path


def _umask_mode(mode: int) -> int:
    """`mode` less the process umask: mkstemp/mkdtemp create 0600/0700, ordinary outputs get the usual mode."""
    umask = os.umask(0)
    os.umask(umask)
    return mode & ~umask


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is renamed onto `path`.

    The temporary name keeps the final suffix (e.g. `.nii.gz`) so libraries that
    choose a format by extension write the right one. On any exception the
    temporary file is removed and `path` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = suffix if suffix is not None else "".join(path.suffixes)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name.split('.')[0]}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    os.chmod(tmp, _umask_mode(0o666))
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as exc:
        if exc.filename is None and exc.errno:  # a failed write (e.g. a full disk) names no file: name the output
            raise OSError(exc.errno, exc.strerror, str(path)) from None
        raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


_RENAME_EXCHANGE = 2  # renameat2 flag (Linux): swap two paths in one step


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths atomically where the OS can (Linux renameat2); False where it cannot."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    return fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists on this machine (owned by anyone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def clean_dead_temps(path: str | os.PathLike, min_age_s: float = 3600.0) -> list[Path]:
    """Remove the hidden temporary folders of `path` left by runs that died (a kill, a power cut).

    A temp folder is named `.NAME.PID-XXXX.tmp` by the process that writes it: it is removed when that
    process is gone. Older names without a pid are removed once `min_age_s` old. An interrupted swap
    (`.NAME.old` with NAME missing) is put back, so OUT is never left missing.
    """
    path = Path(path)
    removed = []
    old = path.with_name(f".{path.name}.old")
    if old.exists() and not path.exists():
        os.replace(old, path)  # killed between the two renames of a swap: the previous output comes back
    elif old.exists():
        shutil.rmtree(old, ignore_errors=True)
        removed.append(old)
    if not path.parent.is_dir():
        return removed
    now = time.time()
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        owner = tmp.name[len(path.name) + 2 : -len(".tmp")].split("-")[0]
        try:
            dead = not pid_alive(int(owner)) if owner.isdigit() else now - tmp.stat().st_mtime > min_age_s
        except OSError:
            continue
        if dead and tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
            removed.append(tmp)
    return removed


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; on success it replaces `path` whole.

    Temp folders of dead runs beside `path` are removed first; the swap is one atomic exchange where the
    OS offers it, else two renames that the next run completes if a kill falls between them.
    """
    path = Path(path)
    tmp = _temp_dir_beside(path)
    try:
        yield tmp
        _swap_in(tmp, path)
        _fsync_dir(path.parent)
    except OSError as exc:
        raise _named(exc, path, tmp) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _named(exc: OSError, path: Path, tmp: Path) -> OSError:
    """A failed write that names no file (a full disk) or only the hidden temp folder: name the output."""
    if exc.filename is None or str(exc.filename).startswith(str(tmp)):
        reason = exc.strerror or " ".join(str(exc).split())
        if "requested and" in reason:  # numpy's short write: what a full disk looks like from tofile/save
            reason += "; the disk is probably full"
        return OSError(exc.errno or errno.EIO, f"{reason}; nothing was replaced", str(path))
    return exc


def _temp_dir_beside(path: Path) -> Path:
    """A new hidden folder `.NAME.PID-XXXX.tmp` beside `path`, after removing those of dead runs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_dead_temps(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}-", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, _umask_mode(0o777))
    return tmp


def _swap_in(tmp: Path, path: Path) -> None:
    """Put folder `tmp` at `path`; what was at `path` ends at `tmp` (removed by the caller)."""
    if not path.exists():
        os.replace(tmp, path)
    elif not (path.is_dir() and _exchange(tmp, path)):
        old = path.with_name(f".{path.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
        os.replace(tmp, path)
        os.replace(old, tmp)


def safe_name(name, what: str = "name", source: str | os.PathLike | None = None) -> str:
    """`name` if it can be one path component inside an output folder, else a ValueError sentence.

    Names read from files (a checkpoint's target, a subject id, a modality) become file and folder names;
    `..`, a separator, NUL, an empty or hidden name would put a file outside `--out` or hide it.
    """
    where = f"{source}: " if source is not None else ""
    if not isinstance(name, str) or not name or name in (".", "..") or name.startswith(".") \
            or any(c in name for c in "/\\\0") or len(name) > 200:
        raise ValueError(f"{where}{what} {name!r} cannot be used as a file name; expected a plain name without "
                         "'/', '\\', '..', NUL or a leading dot.")
    return name


def safe_relpath(rel, base: str | os.PathLike, source: str | os.PathLike | None = None) -> Path:
    """`base / rel` for a relative path read from a file, refused if any part of it is not a `safe_name`."""
    if not isinstance(rel, str) or not rel:
        raise ValueError(f"{source or base}: path {rel!r} is not a relative path inside {base}.")
    for part in rel.replace("\\", "/").split("/"):
        safe_name(part, "path part", source or base)
    return Path(base) / rel


def _marker(out: Path, command: str) -> Path:
    return out / f".phmdiff-{command}.json"


def _owned_files(out: Path, command: str) -> list[str] | None:
    """The top-level names `command` wrote into `out` last time, or None if `out` is not its output."""
    try:
        meta = json.loads(_marker(out, command).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("command") != command:
        return None
    files = meta.get("files")
    return [f for f in files if isinstance(f, str)] if isinstance(files, list) else []


def check_out_dir(out: str | os.PathLike, command: str, overwrite: bool = False) -> Path:
    """The one rule for output folders: `out` must be missing, empty or this command's own earlier output,
    unless `overwrite` (then files of others are still kept: only this command's names are replaced)."""
    out = Path(out)
    clean_dead_temps(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out}: output path is a file; expected a folder for phmdiff {command}.")
    if out.is_dir() and not overwrite and _owned_files(out, command) is None:
        entries = sorted(p.name for p in out.iterdir())
        if entries:
            shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
            raise ValueError(f"{out}: output folder holds files phmdiff {command} did not write ({shown}); "
                             "choose an empty or new --out, or pass --overwrite to write into it (other files "
                             "are kept).")
    return out


def claim_out_dir(out: str | os.PathLike, command: str, files: list[str] | None = None) -> None:
    """Mark `out` as this command's output (what `check_out_dir` accepts without --overwrite)."""
    out = Path(out)
    names = sorted(set(_owned_files(out, command) or []) | set(files or []))
    atomic_write_text(_marker(out, command), json.dumps({"command": command, "files": names}) + "\n")


@contextlib.contextmanager
def publish_dir(out: str | os.PathLike, command: str, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temp folder; on success its files become `out`'s, published as one unit.

    `out` must pass `check_out_dir`. When `out` holds nothing but this command's earlier output the
    whole folder is swapped in one step (a reader sees all old files or all new ones); when it also holds
    files of others (allowed by `overwrite`) only this command's names are replaced and the rest is kept.
    """
    out = check_out_dir(out, command, overwrite)
    ours = set(_owned_files(out, command) or []) | {_marker(out, command).name}
    tmp = _temp_dir_beside(out)
    try:
        yield tmp
        names = sorted(p.name for p in tmp.iterdir())
        atomic_write_text(_marker(tmp, command), json.dumps({"command": command, "files": names}) + "\n")
        present = {p.name for p in out.iterdir()} if out.is_dir() else set()
        if not present - ours:  # nothing of others: one atomic swap of the whole folder
            _swap_in(tmp, out)
            _fsync_dir(out.parent)
            return
        for name in [*names, _marker(out, command).name]:  # others' files are kept: replace our names only
            src, dst = tmp / name, out / name
            if dst.is_dir() and src.is_dir() and _exchange(src, dst):
                continue
            if dst.is_dir() and not dst.is_symlink():
                shutil.rmtree(dst)
            os.replace(src, dst)
        for name in ours - set(names) - {_marker(out, command).name}:  # ours from last time, not written now
            stale = out / name
            if stale.is_dir() and not stale.is_symlink():
                shutil.rmtree(stale)
            else:
                stale.unlink(missing_ok=True)
        _fsync_dir(out)
    except OSError as exc:
        raise _named(exc, out, tmp) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def check_writable_dir(path: str | os.PathLike) -> Path:
    """Create `path` if needed and make sure files can be written there, or say why not."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test."):
            pass
    except OSError as exc:
        raise ValueError(f"{path}: output folder is not writable ({exc.strerror or exc}).") from None
    return path
