"""Standard (ST) and PGD adversarial training (AT) of the AutoLoss-AR models, with resumable checkpoints.

Optimizer as the paper (Section V-B.8): SGD, momentum 0.9, weight decay 5e-4, lr divided by 10 at
the milestones. AT (Madry et al.) trains on PGD-7 l_inf examples, eps 0.1 (MNIST) / 0.01
(CIFAR-10), random start, constant step 2.5 * eps / 7. The adversarial examples are made with the
model in eval mode (BatchNorm uses its running statistics and is not updated by the attack's
forward passes); the weight update is in train mode.

Files, per model, under ``results/models/<scale>/``:

* ``<dataset>-<net>-<training>.pt``      -- final weights + configuration + test accuracy (small)
* ``<dataset>-<net>-<training>.log.csv`` -- per-epoch loss, train accuracy, test accuracy, seconds
* ``<dataset>-<net>-<training>.last.pt`` -- the resumable state after the last finished epoch
  (optimizer, scheduler, RNG); deleted once training ends.
"""
from __future__ import annotations

import io
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from torch.torch_version import TorchVersion
from tqdm.auto import tqdm

from lossbook import store
from lossbook.config import RESULTS_DIR, TrainConfig, quiet, train_config
from lossbook.core import data
from lossbook.core.attacks import pgd
from lossbook.core.models import accuracy, build_model, default_device


def model_dir(scale: str, root: Path | None = None) -> Path:
    return (root or RESULTS_DIR / "models") / scale


def checkpoint_path(cfg: TrainConfig, root: Path | None = None) -> Path:
    """``<dataset>-<net>-<training>.pt`` for seed 0 (the book's models), ``...-seed<k>.pt`` otherwise."""
    return model_dir(cfg.scale, root) / f"{cfg.name()}{f'-seed{cfg.seed}' if cfg.seed else ''}.pt"


def _read_checkpoint(path: Path, device=None) -> dict:
    """A saved model or resume state, read as plain data only (tensors, numbers, strings, lists and dicts:
    ``weights_only``), so that a checkpoint can never run code; an unreadable or unsafe file is named in the
    error, in one line."""
    try:
        with torch.serialization.safe_globals([TorchVersion]):  # a str subclass older checkpoints hold
            return torch.load(path, map_location=device or "cpu", weights_only=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else ""
        unsafe = "Unsupported global" in str(exc) or "Weights only load failed" in str(exc)
        why = "it holds objects other than plain data, which could run code" if unsafe else f"{type(exc).__name__}: {first}"
        raise ValueError(f"{path}: unreadable checkpoint ({why}); delete it to train anew") from None


def _config_difference(saved: dict, wanted: dict) -> str:
    return ", ".join(f"{k}={saved.get(k)!r} (asked {wanted[k]!r})" for k in wanted if saved.get(k) != wanted[k])


def _adversarial_batch(model, xb, yb, cfg: TrainConfig, generator: torch.Generator) -> torch.Tensor:
    # pgd attacks the model in eval mode and hands it back in the mode it found it (training)
    res = pgd(model, xb, yb, norm="linf", eps=cfg.at_eps, steps=cfg.at_steps, step_size=cfg.at_step_size,
              schedule="constant", mode="final", generator=generator)
    return res.x_adv[0]


# ------------------------------------------------------------------------------------------------
# The training loop (NET-1/NET-2 here, ATRAS's MLPs and the verified MLPs of chapter 07 too)
# ------------------------------------------------------------------------------------------------
def clean_loss(model, xb, yb) -> tuple[torch.Tensor, torch.Tensor]:
    """CE on the batch as it is; returns (loss, logits)."""
    logits = model(xb)
    return F.cross_entropy(logits, yb), logits


def adversarial_loss(adversary, mix: float = 1.0):
    """A batch loss of (1 - mix) clean CE + mix CE on ``adversary(model, xb, yb)``, the examples crafted
    on the current model (the attacks hand the model back in training mode); logits are the clean ones."""
    def batch_loss(model, xb, yb):
        xa = adversary(model, xb, yb)
        logits = model(xb)
        return (1 - mix) * F.cross_entropy(logits, yb) + mix * F.cross_entropy(model(xa), yb), logits
    return batch_loss


def fit(model, opt, x, y, epochs: int, batch_size: int, generator: torch.Generator, batch_loss=clean_loss,
        desc: str = "", progress: bool = True, first_epoch: int = 0, last_epoch: int | None = None,
        end_epoch=None) -> None:
    """Minibatch training: epochs ``first_epoch`` .. ``last_epoch`` - 1 (default: to ``epochs``) of
    ``opt`` on ``batch_loss(model, xb, yb) -> (loss, logits)``, the batches in the order of a random
    permutation drawn from ``generator`` each epoch. After each epoch ``end_epoch(epoch, stats)`` gets
    the epoch's mean loss, training accuracy and seconds (for a scheduler, a log, a checkpoint)."""
    dev = next(model.parameters()).device
    n = len(x)
    for epoch in range(first_epoch, epochs if last_epoch is None else last_epoch):
        t0 = time.perf_counter()
        model.train()
        perm = torch.randperm(n, generator=generator)
        total_loss = total_correct = 0.0
        bar = tqdm(range(0, n, batch_size), desc=f"{desc} epoch {epoch + 1}/{epochs}", leave=False, **quiet(progress))
        for i in bar:
            idx = perm[i:i + batch_size]
            xb, yb = x[idx].to(dev), y[idx].to(dev)
            loss, logits = batch_loss(model, xb, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if end_epoch is not None or progress:  # each .item() waits for the device: only when read
                value = loss.item()
                total_loss += value * len(idx)
                total_correct += float(logits.argmax(1).eq(yb).sum())
                bar.set_postfix(loss=f"{value:.3f}")
        if end_epoch is not None:
            end_epoch(epoch, {"train_loss": total_loss / n, "train_acc": total_correct / n,
                              "seconds": time.perf_counter() - t0})


def _save_atomic(obj, path: Path) -> None:
    """``torch.save`` into a temporary file beside ``path``, then rename: a kill (a timeout, Ctrl-C)
    leaves either the old file or the new one, never half of one."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    store.write_atomic(path, buffer.getvalue())


def _rng_state(gen: torch.Generator) -> dict:
    return {"torch": torch.get_rng_state(), "gen": gen.get_state()}


def train(cfg: TrainConfig, root: Path | None = None, device: torch.device | None = None,
          progress: bool = True, stop_after_epochs: int | None = None, force: bool = False) -> dict:
    """Train one model as ``cfg`` says, resuming from ``.last.pt`` if an earlier run was interrupted.

    Returns the final record (configuration, test accuracy, seconds). A finished model of the same
    configuration is not trained again (its record comes back with ``skipped``); one of another
    configuration stops with the differences, unless ``force``, which trains anew and replaces the
    file only when training is complete. ``stop_after_epochs`` ends the call early (as an
    interruption would), leaving the resumable state on disk.
    """
    device = device or default_device()
    out = checkpoint_path(cfg, root)
    out.parent.mkdir(parents=True, exist_ok=True)
    last = out.with_suffix(".last.pt")
    if out.exists() and not force:  # a finished model is never trained again by accident
        saved = _read_checkpoint(out)
        if saved["config"] != cfg.to_dict():
            diff = _config_difference(saved["config"], cfg.to_dict())
            raise ValueError(f"{out} holds a model trained with other settings ({diff}); pass force=True (--force) "
                             f"to replace it")
        saved.pop("model")
        return {**saved, "skipped": True}
    log_path = out.with_suffix(".log.csv")

    x_train, y_train = data.load(cfg.dataset, "train", cfg.n_train)
    x_test, y_test = data.load(cfg.dataset, "test", cfg.n_train)  # smoke uses a test subset too

    torch.manual_seed(cfg.seed)
    model = build_model(cfg.dataset, cfg.net).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(cfg.milestones), gamma=0.1)
    gen = torch.Generator().manual_seed(cfg.seed + 1)  # data order and PGD random starts
    start_epoch, seconds, log = 0, 0.0, []

    if last.exists():
        state = _read_checkpoint(last)  # on the CPU: RNG states must be CPU tensors; load_state_dict moves the rest
        if state["config"] != cfg.to_dict():
            diff = _config_difference(state["config"], cfg.to_dict())
            raise ValueError(f"{last}: resume state of another configuration ({diff}); delete it to start afresh")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict({**state["scheduler"], "milestones": Counter(state["scheduler"]["milestones"])})
        torch.set_rng_state(state["rng"]["torch"])
        gen.set_state(state["rng"]["gen"])
        start_epoch, seconds, log = state["epoch"], state["seconds"], state["log"]

    def batch_loss(model, xb, yb):  # Madry et al.: the adversarial examples only
        return clean_loss(model, _adversarial_batch(model, xb, yb, cfg, gen) if cfg.training == "at" else xb, yb)

    def end_epoch(epoch: int, stats: dict) -> None:  # the scheduler, the log and the resume state
        nonlocal seconds
        sched.step()
        seconds += stats["seconds"]
        row = {"epoch": epoch + 1, "lr": opt.param_groups[0]["lr"], "train_loss": stats["train_loss"],
               "train_acc": stats["train_acc"], "test_acc": accuracy(model, x_test, y_test), "seconds": round(seconds, 2)}
        log.append(row)
        _save_atomic({"config": cfg.to_dict(), "model": model.state_dict(), "optimizer": opt.state_dict(),
                      "scheduler": {**sched.state_dict(), "milestones": dict(sched.state_dict()["milestones"])},
                      "rng": _rng_state(gen), "epoch": epoch + 1, "seconds": seconds, "log": log}, last)
        if progress:
            tqdm.write(f"{cfg.name()} [{cfg.scale}] epoch {epoch + 1}: loss {row['train_loss']:.4f} "
                       f"train acc {row['train_acc']:.4f} test acc {row['test_acc']:.4f} ({seconds:.0f}s)")

    stop = cfg.epochs if stop_after_epochs is None else min(cfg.epochs, start_epoch + stop_after_epochs)
    fit(model, opt, x_train, y_train, cfg.epochs, cfg.batch_size, gen, batch_loss, f"{cfg.name()} [{cfg.scale}]",
        progress, first_epoch=start_epoch, last_epoch=stop, end_epoch=end_epoch)
    if stop < cfg.epochs:
        return {"interrupted_at_epoch": stop}

    store.save(log_path, pd.DataFrame(log), cfg.to_dict())
    record = {"config": cfg.to_dict(), "test_acc": log[-1]["test_acc"], "train_seconds": round(seconds, 1),
              "device": str(device), "torch": str(torch.__version__)}
    _save_atomic({**record, "model": {k: v.cpu() for k, v in model.state_dict().items()}}, out)
    last.unlink(missing_ok=True)
    return record


def load_model(dataset: str, net: str, training: str, scale: str, root: Path | None = None,
               device: torch.device | None = None) -> torch.nn.Module:
    """Load a trained model by name and scale (eval mode); a clear error if it was never trained."""
    cfg = train_config(dataset, net, training, scale)
    path = checkpoint_path(cfg, root)
    if not path.exists():
        raise FileNotFoundError(
            f"no trained model {cfg.name()} at scale {scale!r} ({path}); train it with "
            f"`python -m lossbook train --dataset {dataset} --net {net} --training {training} --scale {scale}`"
        )
    state = _read_checkpoint(path)
    model = build_model(state["config"]["dataset"], state["config"]["net"])
    model.load_state_dict(state["model"])
    return model.to(device or default_device()).eval()


def load_record(dataset: str, net: str, training: str, scale: str, root: Path | None = None, seed: int = 0) -> dict:
    """The configuration and metrics stored with a trained model of training seed ``seed`` (no weights)."""
    path = checkpoint_path(train_config(dataset, net, training, scale, seed=seed), root)
    state = _read_checkpoint(path)
    state.pop("model")
    return state


def saved_models(folder: Path):
    """(path, record without weights) of every finished checkpoint in ``folder`` (resume states skipped)."""
    for path in sorted(folder.glob("*.pt")):
        if not path.name.endswith(".last.pt"):
            st = _read_checkpoint(path)
            st.pop("model", None)
            yield path, st


def write_accuracies(scale: str, root: Path | None = None) -> Path:
    """Collect the test accuracies of every trained model of ``scale`` into ``accuracies.csv``."""
    folder = model_dir(scale, root)
    rows = []
    for _, st in saved_models(folder):
        c = st["config"]
        rows.append({"dataset": c["dataset"], "net": c["net"], "training": c["training"], "scale": c["scale"],
                     "seed": c.get("seed", 0), "epochs": c["epochs"], "lr": c["lr"], "at_eps": c["at_eps"],
                     "test_acc": round(st["test_acc"], 4),
                     "train_seconds": st["train_seconds"], "device": st.get("device", "?")})
    return store.save(folder / "accuracies.csv", pd.DataFrame(rows), {"what": "accuracies", "scale": scale})


def ensure_trained(datasets, nets, trainings, scale: str, seed: int = 0, recompute: bool = False,
                   root: Path | None = None, progress: bool = True, train_missing: bool = True,
                   missing: list | None = None) -> list[dict]:
    """Load the record of each requested model, training it first where no matching checkpoint exists
    (or ``recompute`` is set). With ``train_missing=False`` a model without checkpoint is skipped and
    its name appended to ``missing``. Returns one record per model (configuration, accuracy, seconds)."""
    records = []
    for dataset in datasets:
        for net in nets:
            for training in trainings:
                cfg = train_config(dataset, net, training, scale, seed=seed)
                path = checkpoint_path(cfg, root)
                rec = None
                if path.exists() and not recompute:
                    rec = load_record(dataset, net, training, scale, root, seed=seed)
                    if rec["config"] != cfg.to_dict():
                        rec = None  # trained with other settings (e.g. another seed): train anew
                if rec is None and not (train_missing or recompute):
                    if missing is not None:
                        missing.append(cfg.name())
                    continue
                if rec is None:
                    if recompute:  # start afresh rather than resume
                        path.with_suffix(".last.pt").unlink(missing_ok=True)
                    rec = train(cfg, root=root, progress=progress, force=True)
                records.append(rec)
    if records:
        write_accuracies(scale, root)
    return records






