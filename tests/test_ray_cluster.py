"""The grid on a real two-node Ray cluster on this machine: a node killed mid-task, results identical
to the local backend's, no run computed twice. Skipped where Ray is absent."""
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

ray = pytest.importorskip("ray")

from lossbook import store  # noqa: E402
from lossbook.chapters import gp_search as G  # noqa: E402
from lossbook.runner import read_events  # noqa: E402

pytestmark = pytest.mark.cluster
SETTINGS = ["mnist-net1-st-linf", "mnist-net1-at-linf", "mnist-net2-st-l2"]
# the smoke plan with runs long enough (about ten seconds) to be caught running
PLAN = G.GridPlan("smoke", "smoke", 1, 1, 32, heldout_steps=(10, 20), gp_overrides=(("gn", 6), ("ps", 16), ("st", 16)))
RAY = str(Path(sys.executable).parent / "ray")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _alive(pid: int) -> bool:
    """Whether the process runs (a zombie, killed and not yet reaped, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _pids_of(marker: str) -> list[int]:
    """Processes whose command line mentions ``marker`` (read from /proc: no column limit)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            try:
                if marker.encode() in (proc / "cmdline").read_bytes():
                    pids.append(int(proc.name))
            except OSError:
                continue
    return pids


@pytest.fixture()
def cluster(data_available, monkeypatch):
    """A head node (a) and a second node (b), one CPU each, each with its own temp dir, on 127.0.0.1."""
    from lossbook.core.train import ensure_trained

    ensure_trained(["mnist"], ["net1", "net2"], ["st", "at"], "smoke", progress=False)
    monkeypatch.setenv("LOSSBOOK_CHUNK", "256")  # the same batches in every process: identical numbers
    port, dirs = _free_port(), [tempfile.mkdtemp(prefix="rayA"), tempfile.mkdtemp(prefix="rayB")]
    common = ["--num-cpus", "1", "--node-ip-address", "127.0.0.1", "--disable-usage-stats"]
    try:
        subprocess.run([RAY, "start", "--head", "--port", str(port), "--temp-dir", dirs[0], "--include-dashboard",
                        "false", *common], env={**os.environ, "LOSSBOOK_NODE": "a"}, check=True, capture_output=True)
        subprocess.run([RAY, "start", "--address", f"127.0.0.1:{port}", "--temp-dir", dirs[1], *common],
                       env={**os.environ, "LOSSBOOK_NODE": "b"}, check=True, capture_output=True)
        yield f"127.0.0.1:{port}", dirs[1]
    finally:
        subprocess.run([RAY, "stop", "--force"], capture_output=True)
        for d in dirs:
            for pid in _pids_of(d):
                os.kill(pid, signal.SIGKILL)
            shutil.rmtree(d, ignore_errors=True)


def test_grid_survives_a_killed_node_and_matches_the_local_backend(cluster, tmp_path):
    address, node_b_dir = cluster
    root, lines, out = tmp_path / "ray", [], {}
    t0 = time.perf_counter()
    driver = threading.Thread(target=lambda: out.update(path=G.run_grid(
        "smoke", SETTINGS, root=root, progress=False, log=lines.append, backend="ray", address=address, plan=PLAN)))
    driver.start()
    killed, deadline = None, time.time() + 300
    while driver.is_alive() and killed is None and time.time() < deadline:
        events = read_events(root, "smoke")
        done = {(e["setting"], e["seed"]) for e in events if e["event"] == "done"}
        on_b = [e for e in events if e["node"] == "b" and e["event"] == "start"
                and (e["setting"], e["seed"]) not in done]
        for e in on_b:  # kill node b (its daemons and the task's worker) once the task has checkpointed
            if (root / "smoke" / e["setting"] / f"run-{e['seed']}.ckpt.json").exists():
                daemons = set(_pids_of(node_b_dir))  # node b's raylet, its agents and workers
                for pid in sorted(daemons | {e["pid"]}):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                killed = (e["setting"], e["seed"], len(daemons), e["pid"])
                break
        time.sleep(0.1)
    driver.join(600)
    ray_seconds = time.perf_counter() - t0
    assert not driver.is_alive() and "path" in out, "the grid did not complete on the cluster"
    assert killed is not None, "no task was caught running on the second node"
    assert killed[2] > 0, "node b had no processes of its own to kill"
    assert not _alive(killed[3]) and not [p for p in _pids_of(node_b_dir) if _alive(p)], "node b survived the kill"

    events = read_events(root, "smoke")
    for name in SETTINGS:
        for seed, _ in PLAN.seeds:
            mine = [e["event"] for e in events if (e["setting"], e["seed"]) == (name, seed)]
            assert mine.count("start") == 1 and mine.count("done") == 1, (name, seed, mine)  # never computed twice
    name, seed, _, _ = killed
    assert "resume" in [e["event"] for e in events if (e["setting"], e["seed"]) == (name, seed)]

    # the same grid with the local backend: identical results
    t1 = time.perf_counter()
    local = G.run_grid("smoke", SETTINGS, root=tmp_path / "local", progress=False, log=lambda *_: None, plan=PLAN)
    local_seconds = time.perf_counter() - t1
    pd.testing.assert_frame_equal(store.load(out["path"]), store.load(local))
    for name in SETTINGS:
        for seed, _ in PLAN.seeds:
            a, b = (store.load(r / "smoke" / name / f"run-{seed}.json") for r in (root, tmp_path / "local"))
            assert (a["best"], a["best_fitness"], a["hall_of_fame"]) == (b["best"], b["best_fitness"], b["hall_of_fame"])
    # a second call on the cluster finds every run finished: nothing is computed again
    G.run_grid("smoke", SETTINGS, root=root, progress=False, log=lambda *_: None, backend="ray", address=address,
               plan=PLAN)
    again = read_events(root, "smoke")[len(events):]
    assert again and all(e["event"] == "finished earlier" for e in again)
    # chapter 07's exact verification as Ray tasks over shards of images: the same verdicts as locally
    from lossbook.chapters import exact_risk

    study = exact_risk.select_studies("all", "smoke", n_images=6, time_limit=5.0)[0]
    t2 = time.perf_counter()
    on_ray = exact_risk.run_study(study, "smoke", root=tmp_path / "exact-ray", progress=False, backend="ray", address=address,
                          shard=3)
    exact_seconds = time.perf_counter() - t2
    here = exact_risk.run_study(study, "smoke", root=tmp_path / "exact-local", progress=False)
    assert list(on_ray["index"]) == list(here["index"])
    decided = (on_ray["status"] != "unknown") & (here["status"] != "unknown")
    assert decided.sum() >= 4 and (on_ray["status"][decided] == here["status"][decided]).all()
    shard_events = read_events(tmp_path / "exact-ray" / "smoke" / "shards", "")
    assert sorted(e["first"] for e in shard_events if e["event"] == "done") == [0, 3]  # two shards of 3 images
    print(f"\nsmoke exact study of {study.n_images} images as Ray shards: {exact_seconds:.1f} s")
    print(f"\nsmoke grid of {len(SETTINGS)} settings x {len(PLAN.seeds)} runs: 2-node Ray cluster {ray_seconds:.1f} s "
          f"(node b killed during {killed[0]} run {killed[1]}, {killed[2]} processes), local {local_seconds:.1f} s")
