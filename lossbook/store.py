"""The one way results are written and read.

Every result file (a CSV table, a JSON object, an .npz of arrays) is written by :func:`save` with a
*record* beside it, ``<file>.record``: the request that made it (its configuration, seed, scale),
its kind, the number of rows, the SHA-256 of its bytes and the code version. Both are written to a
temporary file first and then renamed, so a kill never leaves half a file, and a recomputation
replaces the old result only when the new one is complete.

:func:`load` validates: a missing record, a content that no longer matches its hash (a truncated or
edited file) or a record made for another request raises :class:`ResultError` with one line that
names the file and what is wrong.

A write is three renames: the new record to ``<file>.record.pending``, the new content to ``<file>``,
the pending record to ``<file>.record``. Killed between any two of them (or out of disk space), a
reader finds either the old pair, or the new content with its pending record, which it puts in force
(roll forward); a pending record whose content never arrived is dropped. Never a mix. :func:`cached`
reuses a result only for the same request and otherwise computes it anew into the same place.
"""
from __future__ import annotations

import contextlib
import functools
import glob
import hashlib
import io
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from lossbook import __version__

KINDS = ("table", "json", "arrays")


class ResultError(ValueError):
    """A result file that cannot be used as asked (missing record, damaged, made for another request)."""


def record_path(path: Path) -> Path:
    """Where the record of ``path`` lives: ``<file>.record``."""
    path = Path(path)
    return path.with_name(path.name + ".record")


def pending_path(path: Path) -> Path:
    """Where a write puts the new record before the new content is in place: ``<file>.record.pending``."""
    path = Path(path)
    return path.with_name(path.name + ".record.pending")


def _settle(path: Path) -> None:
    """Finish or undo a write that was killed between its renames (see the module docstring)."""
    pending = pending_path(path)
    if not pending.exists():
        return
    with _folder_lock(path.parent):
        if not pending.exists():  # another process settled it meanwhile
            return
        try:
            sha = json.loads(pending.read_text())["sha256"]
            arrived = path.exists() and hashlib.sha256(path.read_bytes()).hexdigest() == sha
        except (OSError, ValueError, KeyError, TypeError):
            arrived = False
        if arrived:
            os.replace(pending, record_path(path))
        else:
            pending.unlink(missing_ok=True)


#: the paths whose uncommitted changes (new files included) make a result's code stamp "-dirty": the code that
#: computes, not the results it writes (a background run rewriting a tracked result file leaves the code as
#: committed); ignored files (bytecode caches) do not count
CODE_PATHS = ("lossbook", "pyproject.toml", "environment.yml")


def git_stamp(root: Path) -> str:
    """The checkout's commit, ``-dirty`` with uncommitted changes or new files under :data:`CODE_PATHS` ("" outside
    git)."""
    def git(*args) -> str:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=5).stdout.strip()

    try:
        rev = git("rev-parse", "--short", "HEAD")
        return rev + "-dirty" if rev and git("status", "--porcelain", "--", *CODE_PATHS) \
            else rev
    except (OSError, subprocess.SubprocessError):
        return ""


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """The package version and, in a git checkout, its :func:`git_stamp`: the stamp of every result's record."""
    rev = git_stamp(Path(__file__).resolve().parent.parent)
    return f"{__version__}+{rev}" if rev else __version__


def normalize(request: Any) -> Any:
    """The JSON form of a request (tuples become lists, keys strings), as stored."""
    return json.loads(json.dumps(request, default=str))


def _encode(obj, kind: str) -> tuple[bytes, int | None]:
    if kind == "table":
        return obj.to_csv(index=False).encode(), len(obj)
    if kind == "json":
        return (json.dumps(obj, indent=1, default=str) + "\n").encode(), None
    buf = io.BytesIO()
    np.savez_compressed(buf, **obj)
    return buf.getvalue(), None


def _decode(data: bytes, kind: str):
    if kind == "table":
        return pd.read_csv(io.BytesIO(data))
    if kind == "json":
        return json.loads(data)
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary file of this writer's own, flushed to the disk, then rename: readers see the
    old or the new file, after a kill or a power cut alike; a failed write (a full disk) removes its
    temporary file and raises."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _sync_folder(folder: Path) -> None:
    """Make the folder's renames durable (where the platform lets a folder be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - file systems that refuse fsync on a folder
        pass
    finally:
        os.close(fd)


_HELD: set = set()  # folders whose lock this process holds (flock would deadlock on a second open)


@contextlib.contextmanager
def _folder_lock(folder: Path):
    """Serialize writers of one folder (processes of a cluster on a shared file system), where POSIX allows."""
    key = os.path.realpath(folder)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: renames stay atomic, pairs are not serialized
        fcntl = None
    if fcntl is None or key in _HELD:
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        _HELD.add(key)
        yield
    finally:
        _HELD.discard(key)
        os.close(fd)


def kind_of(obj) -> str:
    if isinstance(obj, pd.DataFrame):
        return "table"
    if isinstance(obj, dict) and obj and all(isinstance(v, np.ndarray) for v in obj.values()):
        return "arrays"
    return "json"


def save(path: Path, obj, request: dict, kind: str | None = None) -> Path:
    """Write ``obj`` (DataFrame -> CSV, dict of arrays -> .npz, else JSON) and its record, atomically.

    Concurrent writers of one folder take turns, so a file and its record always belong together; a
    result identical to the one saved for the same request is left as it is (its record keeps its date).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _folder_lock(path.parent):
        _write(path, obj, request, kind)
    return path


def update(path: Path, request: dict, change: Callable[[Any], Any], kind: str | None = None) -> Path:
    """Read, change and write one result while holding its folder's lock: ``change(current)`` returns the
    new content, ``current`` being the saved content for ``request`` (None where there is none). Two
    processes adding rows to one table this way never lose each other's rows."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _folder_lock(path.parent):
        current = load(path, request) if matches(path, request) else None
        _write(path, change(current), request, kind)
    return path


def _write(path: Path, obj, request: dict, kind: str | None) -> None:
    """The file and its record (the caller holds the folder's lock)."""
    kind = kind or kind_of(obj)
    data, rows = _encode(obj, kind)
    digest = hashlib.sha256(data).hexdigest()
    if _unchanged(path, digest, request):
        return
    rec = {"kind": kind, "request": normalize(request), "rows": rows, "bytes": len(data), "sha256": digest,
           "code": code_version(), "written": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    for stale in path.parent.glob(glob.escape(path.name) + ".*.tmp"):  # left by a killed writer: the lock is ours
        stale.unlink(missing_ok=True)
    write_atomic(pending_path(path), (json.dumps(rec, indent=1) + "\n").encode())  # 1: the new record, pending
    write_atomic(path, data)  # 2: the new content
    os.replace(pending_path(path), record_path(path))  # 3: the new record in force
    _sync_folder(path.parent)


def _unchanged(path: Path, digest: str, request: dict) -> bool:
    """Whether ``path`` already holds these bytes, intact, for this request."""
    try:
        rec = record(path)
        return (rec.get("sha256") == digest and rec.get("request") == normalize(request)
                and hashlib.sha256(path.read_bytes()).hexdigest() == digest)
    except (OSError, ResultError, json.JSONDecodeError):
        return False


def record(path: Path) -> dict:
    """The record of a result file (no validation of the content), after settling a killed write."""
    path = Path(path)
    _settle(path)
    rp = record_path(path)
    if not rp.exists():
        raise ResultError(f"{path}: no record {rp.name} beside it, so what made it is unknown; recompute it")
    try:
        return json.loads(rp.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ResultError(f"{rp}: unreadable record ({exc}); recompute {path.name}") from None


def differences(saved: Any, wanted: Any, prefix: str = "") -> list[str]:
    """The keys (dotted) whose values differ between two requests."""
    if isinstance(saved, dict) and isinstance(wanted, dict):
        out = []
        for k in sorted(set(saved) | set(wanted), key=str):
            out += differences(saved.get(k), wanted.get(k), f"{prefix}{k}.")
        return out
    return [] if saved == wanted else [f"{prefix[:-1] or 'request'}={saved!r} (asked {wanted!r})"]


def load(path: Path, request: dict | None = None):
    """The validated content of a result file; with ``request``, only if it was made for it."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such result; compute it first")
    rec = record(path)
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != rec["sha256"]:  # a writer between the two reads? read again, in turn
        with _folder_lock(path.parent):
            rec, data = record(path), path.read_bytes()
    if hashlib.sha256(data).hexdigest() != rec["sha256"]:
        rows = f"{rec['rows']} rows, " if rec.get("rows") is not None else ""
        raise ResultError(f"{path}: content does not match its record ({rows}{rec['bytes']} bytes written, "
                          f"{len(data)} now): the file was truncated or edited; recompute it")
    if request is not None and rec["request"] != normalize(request):
        diff = differences(rec["request"], normalize(request))
        raise ResultError(f"{path}: made for another request ({'; '.join(diff[:4])}{'; ...' if len(diff) > 4 else ''})")
    obj = _decode(data, rec["kind"])
    if rec["kind"] == "table" and rec["rows"] is not None and len(obj) != rec["rows"]:
        raise ResultError(f"{path}: {len(obj)} rows, its record says {rec['rows']}; recompute it")
    return obj


def matches(path: Path, request: dict) -> bool:
    """Whether ``path`` exists with a record made for ``request`` (its content is checked on load)."""
    path = Path(path)
    _settle(path)
    if not path.exists() or not record_path(path).exists():
        return False
    try:
        return record(path)["request"] == normalize(request)
    except ResultError:
        return False


def cached(path: Path, request: dict, compute: Callable[[], Any], recompute: bool = False):
    """The result at ``path`` if it was made for ``request`` (validated), else ``compute()`` saved there.

    A result of another request (or ``recompute``) is replaced only once the new one is complete.
    """
    if not recompute and matches(path, request):
        return load(path, request)
    obj = compute()
    save(path, obj, request)
    return obj


def adopt(path: Path, request: dict, kind: str | None = None) -> Path:
    """Write a record for a result file made before the store existed (its content as it is now)."""
    path = Path(path)
    obj = _decode(path.read_bytes(), kind or {".csv": "table", ".npz": "arrays"}.get(path.suffix, "json"))
    data = path.read_bytes()
    rec = {"kind": kind or kind_of(obj), "request": normalize(request), "rows": len(obj) if isinstance(obj, pd.DataFrame)
           else None, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(), "code": "adopted",
           "written": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    write_atomic(record_path(path), (json.dumps(rec, indent=1) + "\n").encode())
    return path


def records(root: Path) -> list[tuple[Path, dict]]:
    """Every (result path, record) under ``root``."""
    out = []
    for rp in sorted(Path(root).rglob("*.record")):
        path = rp.with_name(rp.name[:-len(".record")])
        try:
            out.append((path, record(path)))  # a killed write settled first
        except ResultError:  # its record went with the settling (a pending write whose content never came)
            continue
    return out
