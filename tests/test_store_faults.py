"""A store write killed at any point, or out of disk space, leaves the old result with its record or the
new one with its record, never a mix; the next write goes through."""
from __future__ import annotations

import errno
import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import pandas as pd
import pytest
from conftest import fill_disk_at

from lossbook import store

# a writer that saves version k, k+1, ... of one table, starting after the version it finds (a resuming
# run); with CRASH_AT=n it dies abruptly (no clean-up, as a SIGKILL) just before its n-th rename
WRITER = textwrap.dedent("""
    import os, sys
    import pandas as pd
    from lossbook import store
    path, rows = sys.argv[1], int(sys.argv[2])
    crash_at = int(os.environ.get("CRASH_AT", "0"))
    if crash_at:
        real, calls = os.replace, [0]
        def replace(*a):
            calls[0] += 1
            if calls[0] == crash_at:
                os._exit(9)
            real(*a)
        store.os.replace = replace
    if os.environ.get("SLOW_DISK"):  # writes of 64 KB chunks, 20 ms each: a kill often lands inside one
        import time
        real_fdopen = os.fdopen
        class Slow:
            def __init__(self, fh):
                self.fh = fh
            def __enter__(self):
                return self
            def __exit__(self, *a):
                self.fh.close()
            def write(self, data):
                for i in range(0, len(data), 65536):
                    self.fh.write(data[i:i + 65536])
                    self.fh.flush()
                    time.sleep(0.02)
            def flush(self):
                self.fh.flush()
            def fileno(self):
                return self.fh.fileno()
        store.os.fdopen = lambda *a, **k: Slow(real_fdopen(*a, **k))
    print("ready", flush=True)  # imports done: the test's clock starts here
    k = store.record(path)["request"]["version"] + 1 if os.path.exists(path) else 0
    while True:
        store.save(path, pd.DataFrame({"version": [k] * rows, "x": range(rows)}), {"version": k})
        k += 1
        if crash_at:
            break
""")


def _consistent(path) -> int:
    """The version the folder holds, after checking that content and record belong together."""
    table = store.load(path)
    version = store.record(path)["request"]["version"]
    assert set(table["version"]) == {version} and len(table) == store.record(path)["rows"]
    assert not store.pending_path(path).exists()
    return version


def _writer(path, rows, **env):
    return subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(rows)], env={**os.environ, **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.parametrize("crash_at", [1, 2, 3])
def test_a_writer_dying_before_each_rename_leaves_a_whole_result(tmp_path, crash_at):
    """Renames of a write: 1 the pending record, 2 the content, 3 the record into force. (Each
    write_atomic renames once.) Dying before 1 or 2 keeps the old pair; before 3, the new content is
    there and its pending record is put in force by the next reader."""
    path = tmp_path / "t.csv"
    store.save(path, pd.DataFrame({"version": [0] * 5, "x": range(5)}), {"version": 0})
    proc = _writer(path, 5, CRASH_AT=str(crash_at))
    assert proc.wait(60) == 9, proc.stderr.read().decode()
    assert _consistent(path) == (1 if crash_at == 3 else 0)
    store.save(path, pd.DataFrame({"version": [7] * 5, "x": range(5)}), {"version": 7})  # the next run goes through
    assert _consistent(path) == 7


def test_sigkill_at_random_moments_of_repeated_writes(tmp_path):
    path = tmp_path / "t.csv"
    rng = random.Random(0)
    seen, windows = [], []
    for _ in range(12):
        proc = _writer(path, 40_000, SLOW_DISK="1")
        assert proc.stdout.readline() == b"ready\n"  # whatever the machine's load, timed from the imports' end
        time.sleep(rng.uniform(0.05, 1.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        # where the kill landed: inside the pending record's write (its temporary file only), between the
        # first and the last rename (a pending record: mostly inside the content's write), or elsewhere
        pending, tmp = store.pending_path(path).exists(), bool(list(tmp_path.glob("*.tmp")))
        windows.append("pending" if pending else "record write" if tmp else "outside")
        if path.exists() or pending:
            seen.append(_consistent(path))
    assert seen and seen == sorted(seen) and seen[-1] > 0, seen  # each writer resumed after the last whole version
    assert windows.count("pending") >= 2, f"the kills did not probe the windows between renames: {windows}"
    store.save(path, pd.DataFrame({"version": [99], "x": [0]}), {"version": 99})
    assert not list(tmp_path.glob("*.tmp"))  # the next write clears what killed writers left


def test_disk_full_during_a_write_keeps_the_old_result(tmp_path, monkeypatch):
    path = tmp_path / "t.csv"
    store.save(path, pd.DataFrame({"version": [0] * 5, "x": range(5)}), {"version": 0})
    for nth, when in [(n, w) for n in (1, 2) for w in ("write", "partial", "flush")]:  # 1 the pending record, 2 the content
        fill_disk_at(monkeypatch, nth, when)
        with pytest.raises(OSError, match="No space left"):
            store.save(path, pd.DataFrame({"version": [1] * 5, "x": range(5)}), {"version": 1})
        monkeypatch.undo()
        assert _consistent(path) == 0
        assert not list(tmp_path.glob("*.tmp"))  # the failed write cleaned its temporary file
    real_fsync = os.fsync
    for nth in (1, 2):  # the disk reports itself full only when the bytes are forced out (fsync)
        calls = [0]

        def fsync(fd):
            calls[0] += 1
            if calls[0] == nth:
                raise OSError(errno.ENOSPC, "No space left on device")
            real_fsync(fd)

        monkeypatch.setattr(store.os, "fsync", fsync)
        with pytest.raises(OSError, match="No space left"):
            store.save(path, pd.DataFrame({"version": [1] * 5, "x": range(5)}), {"version": 1})
        monkeypatch.setattr(store.os, "fsync", real_fsync)
        assert _consistent(path) == 0 and not list(tmp_path.glob("*.tmp"))
    store.save(path, pd.DataFrame({"version": [1] * 5, "x": range(5)}), {"version": 1})
    assert _consistent(path) == 1
