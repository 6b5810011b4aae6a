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
import torch

from lossbook import store
from lossbook.config import REPO_ROOT, RESULTS_DIR


@dataclass(frozen=True)
class Block:
    """One block of the lesson: ``minutes`` of class time, an optional command the students run, the
    figures to discuss and the question to put to the class."""

    minutes: int
    title: str
    commands: tuple  # arguments of ``python -m lossbook``, run in order; () where the block reads committed results
    figures: str
    question: str
    answer: str  # for the teacher, in a closed dropdown on the page


LESSON = (
    Block(10, "The question: R against R''", (),
          "the introduction and Results at a glance",
          "An attack reports R'' = 0.30. What does that say about the true adversarial risk R, and what does it not?",
          "Every point the attack found is a real adversarial example, so on these images R >= 0.30: the attack "
          "gives a lower bound. "
          "It says nothing about how far above 0.30 the truth lies; a stronger attack, or an exact verifier, can only "
          "raise the number. Chapter 7 measures that distance for small networks."),
    Block(15, "A toy where the truth is known (chapter 1)", ("run 01_toy_inconsistency --scale smoke",),
          "Figures 1.1 and 1.2; the chapter's closing paragraph",
          "Why can the maximizer of cross-entropy be correctly classified while a misclassified point exists in the ball?",
          "Cross-entropy grows when the true class's probability falls, wherever that probability goes; the 0-1 loss "
          "changes only when another class overtakes the true one. In the ball, CE's maximum can sit where the "
          "probability is spread over two other classes with the true class still ahead, while a point in another "
          "direction crosses one decision boundary. The surrogate and the 0-1 loss then rank points differently."),
    Block(15, "Searching for a loss (chapter 3)",
          ("train --dataset mnist --net net1 --training st --scale smoke",
           "search --dataset mnist --net net1 --training st --scale smoke --runs 1"),
          "Figure 3.1 (the paper arm's 24 settings) and Figure 3.2 (the search's progress)",
          "Why does the book judge a searched loss on held-out images, not on the images it was selected on?",
          "The search picks, among thousands of trees, the one that did best on its own images; part of that lead is "
          "luck on those images (the winner's curse). On images the selection never saw, the gain over CE is an "
          "unbiased estimate, and its interval means what it says."),
    Block(15, "The exact risk of a small network (chapter 7)", ("exact --scale smoke",),
          "Figure 7.1 (every attack's R'' up to the exact R) and Figure 7.2 (what no attack found)",
          "FGSM, PGD and AutoAttack on the same images: which gap is the loss's, which the optimizer's?",
          "With the optimizer fixed (PGD-10, same starts), the difference between CE and another loss is the "
          "loss's share; with the loss fixed, the difference between one FGSM step, PGD-10 and APGD/AutoAttack is "
          "the optimizer's. What no attack reaches, up to the exact R, is the error that remains."),
    Block(15, "ATRAS: robustness judged by FGSM (chapter 6)", ("run 06_atras_sweep --scale smoke",),
          "Figures 6.1 and 6.2; the closing paragraph's FGSM gap from chapter 7",
          "If FGSM misses ten points of the exact risk, which of the paper's conclusions could change?",
          "Every accuracy under FGSM is an upper bound on the accuracy under the worst perturbation. Conclusions "
          "that compare architectures by it (which recovers most after adversarial training) can reorder if "
          "FGSM's gap differs from one architecture to another, for instance where a network masks its gradients."),
    Block(15, "Transfer and landscapes, read from the committed results (chapters 4 and 5)", (),
          "Figure 4.6 (gains under other models and norms) and Figure 5.1 (loss landscapes)",
          "A searched loss that beats CE but not C&W: has the search found anything new?",
          "Not necessarily: C&W's margin loss is handcrafted, so a search that only matches it may have rediscovered "
          "a margin-like loss. That is why the book also reports the gain over the best of CE, C&W and DLR."),
    Block(5, "Wrap-up", (), "Results at a glance",
          "Which verdicts would you trust, and what would you run at paper scale to settle the others?",
          "Trust the verdicts whose interval excludes zero after the correction for many settings, made in the "
          "paper's own regime; the inconclusive ones need more held-out images or more runs (the paper scale, on a "
          "GPU), not a different rule."),
)


#: the lesson's preparation: (shell line, what it does)
SETUP = (("cd lossbook", "the clone's root folder"),
         ("make setup", "once: .venv with every dependency"),
         ("export LOSSBOOK_DATA=/path/to/data", "a folder with mnist.npz and the cifar10-*.npz files;"),
         ("", "unset, torchvision downloads MNIST and CIFAR-10"),
         ("", "into ~/.cache/lossbook on first use"))


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
           "## Before class", "",
           "Every command below runs from the repository's root folder with the environment `make setup` made:",
           "", "```bash", *[f"{cmd:<38}# {why}" for cmd, why in SETUP], "```", "",
           "Where the output lands: models and results under `results/` (the `smoke` folders are not committed; "
           "set `LOSSBOOK_RESULTS=/some/folder` to keep them elsewhere), and each `run` writes the executed "
           "chapter to `runs/<chapter>.ipynb` and a page to open in a browser, "
           "`runs/<chapter>.html` (the command prints both paths; the book's own pages are left alone).", "",
           ":::{warning}",
           "Smoke runs can reverse the book's numbers. With one epoch of training and a few dozen images, the "
           "searched loss of chapter 1's smoke search can come out worse than cross-entropy, and a smoke search can "
           "fail to beat CE at all. Compare what the figures show with the committed `cpu` results in the book, "
           "not the numbers.", ":::", ""]
    start = 0
    for b in LESSON:
        out += [f"## {start}-{start + b.minutes} min: {b.title}", ""]
        for command in b.commands:
            took = f"{by_cmd[command]:.0f} s" if command in by_cmd else "not measured"
            out.append(f"- **Run:** `.venv/bin/python -m lossbook {command}` (measured: {took})")
        if not b.commands:
            out.append("- **Run:** nothing; read the book")
        out += [f"- **Discuss:** {b.figures}", f"- **Ask:** {b.question}", "",
                ":::{admonition} An answer", ":class: dropdown", b.answer, ":::", ""]
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
