"""Ray, for users who outgrow one machine: connect to a cluster, declare tasks, log what they did.

The chapters that can run on a cluster (the grid of chapter 03: one task per (setting, run), then one
per setting's held-out check; chapter 07's verification: one task per shard of images) define their
tasks themselves and use this module for the rest. What makes that safe is the results store:

* every task writes through :mod:`lossbook.store` (atomically), into a results folder that **every
  node can read and write** (``LOSSBOOK_RESULTS``; by default the repository's ``results/``, which is
  shared only when all nodes run on one machine);
* a task checkpoints as it goes (a GP generation, a verified image); a task that Ray retries because
  its worker or node died resumes from that checkpoint, and a finished result is never computed again;
* each task appends one line per event (start, resume, done) to a ``ray-tasks.log`` with the node it
  ran on (:func:`log_event`), so what was recovered can be read afterwards (:func:`read_events`).

Ray is optional (``pip install 'lossbook[cluster]'``): it is imported only when a cluster is used.
"""
from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

#: what every task must see of the driver's environment
TASK_ENV = ("LOSSBOOK_DATA", "LOSSBOOK_CHUNK", "LOSSBOOK_RESULTS")


def log_event(root: Path, preset: str, **event) -> None:
    """Append one event line to ``<root>/<preset>/ray-tasks.log``, with the time, node and process."""
    path = Path(root) / preset / "ray-tasks.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps({"time": round(time.time(), 3), "node": os.environ.get("LOSSBOOK_NODE", ""),
                       "pid": os.getpid(), **event}) + "\n"
    with open(path, "a") as fh:  # one short write in append mode: lines of concurrent tasks do not interleave
        fh.write(line)


def read_events(root: Path, preset: str) -> list[dict]:
    """The task events logged under ``<root>/<preset>`` (see :func:`log_event`)."""
    path = Path(root) / preset / "ray-tasks.log"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@contextlib.contextmanager
def cluster(address: str | None = None):
    """Ray, connected to the cluster at ``address`` (default: ``RAY_ADDRESS``, else "auto") with the
    environment of :data:`TASK_ENV`; shut down on leaving."""
    import ray

    env = {k: os.environ[k] for k in TASK_ENV if k in os.environ}
    ray.init(address=address or os.environ.get("RAY_ADDRESS") or "auto", runtime_env={"env_vars": env},
             log_to_driver=False, ignore_reinit_error=True)
    try:
        yield ray
    finally:
        ray.shutdown()


def remote(ray, fn, max_retries: int = 3, gpu: bool = True):
    """``fn`` as a Ray task retried ``max_retries`` times, on one GPU where ``gpu`` and the cluster has
    GPUs, else on one CPU."""
    use_gpu = gpu and ray.cluster_resources().get("GPU", 0) > 0
    return ray.remote(max_retries=max_retries, **({"num_gpus": 1} if use_gpu else {"num_cpus": 1}))(fn)
