"""Atomic file output: a reader sees the old file or the whole new one, never half.

Every command that writes user-visible outputs (NIfTI volumes, shards,
manifests, checkpoints, reports) goes through these helpers, so a crash,
a full disk or Ctrl-C mid-write leaves the previous state intact.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import json
import os
import re
import secrets
import shutil
import tempfile
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

    The temporary file lies in a hidden stage folder beside `path` that holds its owner record (see
    `_new_stage`), so the litter of a killed writer is provably its own: the commands remove it from their
    folders (`clean_dead_stages_in`; not here: a scan per write would cost a folder listing per file). The
    temporary name keeps the final suffix (e.g. `.nii.gz`) so libraries that choose a format by extension
    write the right one. On any exception the stage is removed and `path` is untouched.
    """
    path = Path(path)
    suffix = suffix if suffix is not None else "".join(path.suffixes)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        stage = _new_stage(path, folder=False)
    except OSError as exc:  # e.g. a read-only folder: name the output, not the hidden stage
        raise OSError(exc.errno or errno.EIO, f"{exc.strerror or exc}; nothing was written", str(path)) from None
    tmp = stage / f"file{suffix}"
    try:
        tmp.touch(mode=0o666)
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as exc:
        raise _named(exc, path, stage) from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)


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


def pid_start(pid: int) -> str | None:
    """The start time of process `pid` as the kernel counts it (Linux), None where it cannot be read.

    A pid alone does not name a process: it is reused. pid + start time does.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2 :].split()[19]  # field 22: starttime, after the "(comm)" field


OWNER = ".phmdiff-owner.json"  # inside a stage folder: who made it (pid, start time) and the token of its name
_STAGE = re.compile(r"\.phmdiff-([0-9a-f]{16})\.(?:tmp|new)\Z")


_SHORT = 120  # a stage's name carries at most this much of its output's name: a 255-byte name has room


def _stage_pattern(path: Path, suffix: str = "tmp") -> str:
    return f".{glob.escape(path.name[:_SHORT])}.phmdiff-*.{suffix}"


def _new_stage(path: Path, folder: bool = True) -> Path:
    """A new hidden folder `.NAME.phmdiff-TOKEN.tmp` beside `path` holding its owner record; a folder's work
    goes in `out/` (`folder`), a file's beside the record."""
    token = secrets.token_hex(8)
    stage = path.with_name(f".{path.name[:_SHORT]}.phmdiff-{token}.tmp")
    new = stage.with_name(f".{path.name[:_SHORT]}.phmdiff-{token}.new")  # renamed to `stage` once its record
    new.mkdir(mode=0o700)  # is inside, so a `.tmp` stage always holds its owner record, whenever a kill lands
    record = {"token": token, "pid": os.getpid(), "start": pid_start(os.getpid()), "name": path.name}
    (new / OWNER).write_text(json.dumps(record))
    if folder:
        (new / "out").mkdir()
        os.chmod(new / "out", _umask_mode(0o777))
    os.rename(new, stage)
    return stage


def _dead_stage(stage: Path) -> dict | None:
    """The owner record of `stage` only when it is provably a stage folder of a process that is gone.

    A real folder (not a link), whose name carries a token, holding a plain owner record with that same
    token, whose process no longer exists (or the pid now names another process, by its start time).
    Anything else, a user's folder that only looks like ours among them, is left alone.
    """
    match = _STAGE.search(stage.name)
    if match is None or stage.is_symlink() or not stage.is_dir():
        return None
    record_path = stage / OWNER
    try:
        if record_path.is_symlink() or not record_path.is_file():
            return None
        record = json.loads(record_path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("token") != match.group(1):
        return None
    pid, start = record.get("pid"), record.get("start")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return None
    if not pid_alive(pid):
        return record
    reused = start is not None and pid_start(pid) not in (None, start)  # the pid now names another process
    return record if reused else None


def clean_dead_temps(path: str | os.PathLike) -> list[Path]:
    """Remove the stage folders of `path` left by runs that died (a kill, a power cut); return them.

    Only folders `_dead_stage` proves ours are touched. A swap torn by a kill (OUT missing, the previous
    OUT inside the dead run's stage as `previous`) is completed by putting the previous OUT back.
    """
    path = Path(path)
    removed = []
    if not path.parent.is_dir():
        return removed
    stages = [*path.parent.glob(_stage_pattern(path)), *path.parent.glob(_stage_pattern(path, "new"))]
    for stage in stages:
        record = _dead_stage(stage)
        if record is None:
            continue
        name = record.get("name")  # the output's whole name, where the stage's own is cut at _SHORT
        plain = isinstance(name, str) and name[:_SHORT] == path.name[:_SHORT] and name not in (".", "..") \
            and "/" not in name and "\0" not in name
        target = path.parent / name if plain else path
        previous = stage / "previous"
        torn = stage.name.endswith(".tmp") and previous.is_dir() and not previous.is_symlink()
        if torn and not os.path.lexists(target):
            os.replace(previous, target)  # killed between the two renames of a swap: the previous output is back
        shutil.rmtree(stage, ignore_errors=True)
        removed.append(stage)
    return removed


def clean_dead_stages_in(folder: str | os.PathLike) -> list[Path]:
    """`clean_dead_temps` for every output of `folder` that has a stage folder there."""
    removed = []
    for stage in Path(folder).glob(".*.phmdiff-*.tmp"):
        name = stage.name[1 : stage.name.rindex(".phmdiff-")]
        if name:
            removed += clean_dead_temps(Path(folder) / name)
    return removed


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; on success it replaces `path` whole.

    Stage folders of dead runs beside `path` are removed first; the swap is one atomic exchange where the
    OS offers it, else two renames that the next run completes if a kill falls between them.
    """
    path = Path(path)
    stage = _stage_beside(path)
    tmp = stage / "out"
    try:
        yield tmp
        _swap_in(tmp, path)
        _fsync_dir(path.parent)
    except OSError as exc:
        raise _named(exc, path, stage) from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _named(exc: OSError, path: Path, tmp: Path) -> OSError:
    """A failed write that names no file (a full disk) or only the hidden temp folder: name the output."""
    if exc.filename is None or str(exc.filename).startswith(str(tmp)):
        reason = exc.strerror or " ".join(str(exc).split())
        if "requested and" in reason:  # numpy's short write: what a full disk looks like from tofile/save
            reason += "; the disk is probably full"
        return OSError(exc.errno or errno.EIO, f"{reason}; nothing was replaced", str(path))
    return exc


def _stage_beside(path: Path) -> Path:
    """A new stage folder beside `path`, after removing those of dead runs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_dead_temps(path)
    return _new_stage(path)


def _swap_in(tmp: Path, path: Path) -> None:
    """Put folder `tmp` (a stage's `out`) at `path`; what was at `path` ends inside the stage (removed by
    the caller). Without an atomic exchange the previous `path` waits as the stage's `previous`."""
    if not os.path.lexists(path):
        os.replace(tmp, path)
    elif not (path.is_dir() and not path.is_symlink() and _exchange(tmp, path)):
        previous = tmp.with_name("previous")
        os.replace(path, previous)
        os.replace(tmp, path)


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


def digest(path: Path) -> str | None:
    """A content checksum of a file or a folder tree (links by their text, never followed); None if missing."""
    h = hashlib.sha256()
    if path.is_symlink():
        h.update(b"link\0" + os.fsencode(os.readlink(path)))
    elif path.is_file():
        h.update(b"file\0")
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    elif path.is_dir():
        h.update(b"dir\0")
        for child in sorted(path.iterdir()):
            h.update(os.fsencode(child.name) + b"\0" + (digest(child) or "").encode() + b"\0")
    else:
        return None
    return h.hexdigest()


def _claims(out: Path, command: str) -> dict[str, str | None] | None:
    """What the marker of `command` in `out` claims: {name: checksum or None}, or None without a marker.

    A claim is not a fact: entries that are not plain names are dropped here, and `_proven` checks the rest.
    """
    marker = _marker(out, command)
    try:
        if marker.is_symlink():
            return None
        meta = json.loads(marker.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("command") != command:
        return None
    files = meta.get("files")
    if isinstance(files, list):  # an older marker: names without checksums, which prove nothing
        files = {f: None for f in files if isinstance(f, str)}
    if not isinstance(files, dict):
        return {}
    claims = {}
    for name, check in files.items():
        try:
            safe_name(name)
        except ValueError:
            continue
        claims[name] = check if isinstance(check, str) else None
    return claims


def _proven(out: Path, command: str) -> set[str]:
    """The entries of `out` provably written by `command`: claimed by its marker, a plain name directly inside
    `out` (not a link), and with the checksum the marker recorded when it was written."""
    proven = set()
    for name, check in (_claims(out, command) or {}).items():
        entry = out / name
        if check is not None and not entry.is_symlink() and entry.parent == out and digest(entry) == check:
            proven.add(name)
    return proven


def check_out_dir(out: str | os.PathLike, command: str, overwrite: bool = False) -> Path:
    """The one rule for output folders: `out` must be missing, empty or this command's own earlier output,
    unless `overwrite` (then files of others are still kept: only this command's names are replaced)."""
    out = Path(out)
    clean_dead_temps(out)
    if out.is_dir():  # `out` itself is the user's choice (a link to a folder is fine, as in `check_inside`)
        clean_dead_stages_in(out)  # the staged files and subjects of killed writers, provably theirs
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out}: output path is a file; expected a folder for phmdiff {command}.")
    if out.is_dir() and not overwrite and _claims(out, command) is None:
        entries = sorted(p.name for p in out.iterdir())
        if entries:
            shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
            raise ValueError(f"{out}: output folder holds files phmdiff {command} did not write ({shown}); "
                             "choose an empty or new --out, or pass --overwrite to write into it (other files "
                             "are kept).")
    return out


def claim_out_dir(out: str | os.PathLike, command: str, files: list[str] | None = None) -> None:
    """Mark `out` as this command's output (what `check_out_dir` accepts without --overwrite).

    The names are claims without checksums: they let a later run into `out` go ahead, never delete anything.
    """
    out = Path(out)
    claims = _claims(out, command) or {}
    claims.update({name: claims.get(name) for name in files or [] if name not in claims})
    atomic_write_text(_marker(out, command), json.dumps({"command": command, "files": claims}) + "\n")


def check_inside(out: str | os.PathLike, path: str | os.PathLike) -> Path:
    """`path` if it lies under `out` with no symbolic link on the way (a link would carry the write elsewhere).

    Only the part below `out` is checked: `out` itself is the user's choice.
    """
    out, path = Path(out), Path(path)
    try:
        rel = path.relative_to(out)
    except ValueError:
        raise ValueError(f"{path}: not inside the output folder {out}.") from None
    here = out
    for part in rel.parts:
        if part in ("", ".", ".."):
            raise ValueError(f"{path}: not a plain path inside the output folder {out}.")
        here = here / part
        if here.is_symlink():
            raise ValueError(f"{here}: is a symbolic link inside the output folder; phmdiff writes nothing "
                             "through a link (remove it, or choose another --out).")
    return path


@contextlib.contextmanager
def publish_dir(out: str | os.PathLike, command: str, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temp folder; on success its files become `out`'s, published as one unit.

    `out` must pass `check_out_dir`. Only entries proven to be this command's earlier output (`_proven`:
    named by its marker, inside `out`, not links, checksums unchanged) are ever replaced or removed; any
    other entry of the same name as a new output is replaced only with `overwrite`, else nothing is
    written and a sentence says why. When `out` holds nothing but proven output the whole folder is swapped
    in one step (a reader sees all old files or all new ones); else only this command's names are replaced.
    """
    out = check_out_dir(out, command, overwrite)
    marker = _marker(out, command).name
    stage = _stage_beside(out)
    tmp = stage / "out"
    try:
        yield tmp
        files = {p.name: digest(p) for p in sorted(tmp.iterdir())}
        atomic_write_text(_marker(tmp, command), json.dumps({"command": command, "files": files}) + "\n")
        present = {p.name for p in out.iterdir()} if out.is_dir() and not out.is_symlink() else set()
        proven = _proven(out, command) if present else set()
        ours = proven | ({marker} if _claims(out, command) is not None else set())
        clash = sorted((set(files) | {marker}) & present - ours)
        if clash and not overwrite:
            raise ValueError(f"{out / clash[0]}: exists and is not phmdiff {command}'s unchanged earlier output; "
                             "nothing was replaced; move it away or pass --overwrite to replace it.")
        if not present - ours:  # nothing of others: one atomic swap of the whole folder
            _swap_in(tmp, out)
            _fsync_dir(out.parent)
            return
        for name in [*files, marker]:  # others' files are kept: replace our names only
            src, dst = tmp / name, out / name
            if dst.is_dir() and not dst.is_symlink() and src.is_dir() and _exchange(src, dst):
                continue
            if dst.is_dir() and not dst.is_symlink():
                shutil.rmtree(dst)
            os.replace(src, dst)
        for name in proven - set(files) - {marker}:  # ours from last time, unchanged, not written now
            stale = out / name
            if stale.is_dir() and not stale.is_symlink():
                shutil.rmtree(stale)
            else:
                stale.unlink(missing_ok=True)
        _fsync_dir(out)
    except OSError as exc:
        raise _named(exc, out, stage) from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)


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
