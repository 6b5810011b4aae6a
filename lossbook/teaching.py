"""The "Teaching with this book" page: a 90-minute lesson on a laptop, with the measured time of every run.

:data:`LESSON` is the plan: per block its minutes, what the students run (a ``python -m lossbook``
command at ``smoke`` scale, or nothing where they read committed ``cpu`` results), which figures to
discuss and the question to ask. :func:`measure` runs every command the way a student would on a
fresh clone -- in an empty results folder, so the smoke models are trained too -- and saves the wall
times with the machine they were measured on (``results/teaching/times.csv``, with its record).
:func:`markdown` writes the page from the plan and the saved times; a block whose time was not
measured says so.
"""
from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from . import store
from .config import REPO_ROOT, RESULTS_DIR


@dataclass(frozen=True)
class Block:
    """One block of the lesson: ``minutes`` of class time, an optional command the students run, the
    figures to discuss and the question to put to the class."""

    minutes: int
    title: str
    commands: tuple  # arguments of ``python -m lossbook``, run in order; () where the block reads committed results
    figures: str
    question: str


LESSON = (
    Block(10, "The question: R against R''", (),
          "the introduction and Results at a glance",
          "An attack reports R'' = 0.30. What does that say about the true adversarial risk R, and what does it not?"),
    Block(15, "A toy where the truth is known (chapter 1)", ("run 01_toy_inconsistency --scale smoke",),
          "Figures 1.1 and 1.2; the chapter's closing paragraph",
          "Why can the maximizer of cross-entropy be correctly classified while a misclassified point exists in the ball?"),
    Block(15, "Searching for a loss (chapter 3)",
          ("train --dataset mnist --net net1 --training st --scale smoke",
           "search --dataset mnist --net net1 --training st --scale smoke --runs 1"),
          "Figure 3.1 (the paper arm's 24 settings) and Figure 3.2 (the search's progress)",
          "Why does the book judge a searched loss on held-out images, not on the images it was selected on?"),
    Block(15, "The exact risk of a small network (chapter 7)", ("exact --scale smoke",),
          "Figure 7.1 (every attack's R'' up to the exact R) and Figure 7.2 (what no attack found)",
          "FGSM, PGD and AutoAttack on the same images: which gap is the loss's, which the optimizer's?"),
    Block(15, "ATRAS: robustness judged by FGSM (chapter 6)", ("run 06_atras_sweep --scale smoke",),
          "Figures 6.1 and 6.2; the closing paragraph's FGSM gap from chapter 7",
          "If FGSM misses ten points of the exact risk, which of the paper's conclusions could change?"),
    Block(15, "Transfer and landscapes, read from the committed results (chapters 4 and 5)", (),
          "Figure 4.6 (gains under other models and norms) and Figure 5.1 (loss landscapes)",
          "A searched loss that beats CE but not C&W: has the search found anything new?"),
    Block(5, "Wrap-up", (), "Results at a glance",
          "Which verdicts would you trust, and what would you run at paper scale to settle the others?"),
)


def times_path(root: Path | None = None) -> Path:
    return (root or RESULTS_DIR) / "teaching" / "times.csv"


def _request() -> dict:
    return {"what": "wall time of each lesson command, fresh results folder",
            "commands": commands()}


def commands() -> list[str]:
    """Every command of the lesson, in order."""
    return [c for b in LESSON for c in b.commands]


def machine() -> str:
    """What the times were measured on: CPU count, Python and torch versions."""
    import torch

    return (f"{os.cpu_count()} CPU cores, {platform.machine()}, Python {platform.python_version()}, "
            f"torch {torch.__version__}, threads {torch.get_num_threads()}")


def measure(root: Path | None = None, progress: bool = True) -> pd.DataFrame:
    """Run every command of :data:`LESSON` as a student would (``python -m lossbook ...`` in an empty
    results folder, executed chapters into a temporary folder) and save the wall times."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "LOSSBOOK_RESULTS": str(Path(tmp) / "results")}
        for command in commands():
            args = shlex.split(command)
            if args[0] == "run":
                args += ["--out", str(Path(tmp) / "chapters")]
            t0 = time.perf_counter()
            res = subprocess.run([sys.executable, "-m", "lossbook", *args], cwd=REPO_ROOT, env=env,
                                 capture_output=True, text=True)
            seconds = time.perf_counter() - t0
            if res.returncode != 0:
                raise RuntimeError(f"lesson command `python -m lossbook {command}` failed:\n{res.stderr[-2000:]}")
            rows.append({"command": command, "seconds": round(seconds, 1), "machine": machine(),
                         "measured": time.strftime("%Y-%m-%d")})
            if progress:
                print(f"{seconds:6.1f} s  python -m lossbook {command}", flush=True)
    table = pd.DataFrame(rows)
    store.save(times_path(root), table, _request())
    return table


def saved_times(root: Path | None = None) -> pd.DataFrame | None:
    path = times_path(root)
    return store.load(path, _request()) if store.matches(path, _request()) else None


def markdown(root: Path | None = None) -> str:
    """The page: the plan with each command's measured time (or "not measured")."""
    times = saved_times(root)
    by_cmd = {} if times is None else dict(zip(times["command"], times["seconds"]))
    total = sum(b.minutes for b in LESSON)
    out = ["# Teaching with this book", "",
           f"A {total}-minute lesson for a laptop. The students clone the repository, run `make setup` once "
           "before class (a few minutes), and then run only `smoke`-scale commands: seconds to a minute "
           "each, small models on a few images, so the numbers are noisy and the figures are what to discuss. "
           "The committed `cpu`-scale results in the book are the reference the smoke runs are compared with.", "",
           ]
    start = 0
    for b in LESSON:
        out += [f"## {start}-{start + b.minutes} min: {b.title}", ""]
        for command in b.commands:
            took = f"{by_cmd[command]:.0f} s" if command in by_cmd else "not measured"
            out.append(f"- **Run:** `python -m lossbook {command}` (measured: {took})")
        if not b.commands:
            out.append("- **Run:** nothing; read the book")
        out += [f"- **Discuss:** {b.figures}", f"- **Ask:** {b.question}", ""]
        start += b.minutes
    out += ["## The times"]
    if times is not None:
        out += ["", f"Wall clock of each command on a fresh clone (an empty results folder, so the smoke "
                f"models are trained too), measured {times['measured'].iloc[0]} on {times['machine'].iloc[0]}; "
                f"{times['seconds'].sum():.0f} s in all. A second run of a command reuses what the first saved "
                "and is faster. Re-measure with `python -m lossbook teaching`."]
    else:
        out += ["", "The commands' times are not measured on this checkout yet: `python -m lossbook teaching`."]
    out += ["", "Every chapter page offers its notebook for download (the download button at the top), and "
            "each chapter ends with exercises that give the exact command to run next."]
    return "\n".join(out) + "\n"
