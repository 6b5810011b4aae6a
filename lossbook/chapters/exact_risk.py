"""Chapter 07: how far each attack's estimate R'' sits from the exact adversarial risk R.

On small ReLU MLPs, :mod:`lossbook.core.exact` decides every image (robust / vulnerable / unknown), so R
is known; every attack the book has runs on the same images, and its approximation error is
``E = R - R''`` (an interval where some image stayed unknown).

* :data:`MODELS`: the verified networks. ATRAS's one-hidden-layer MLPs trained exactly as in
  chapter 06 (ST; FGSM-AT continuing from the ST model), and one two-hidden-layer MLP trained with
  PGD-AT for the AutoLoss-AR side. Their weights are saved through the store (``.npz`` + record).
* :data:`STUDIES`: per scale, which model is verified under which norm and eps, on how many images
  (the first correctly classified test images), with which time limit per image.
* the attacks: every attack of :data:`lossbook.core.attack_registry.ATTACKS` defined under the study's
  norm (FGSM, PGD-10/100 with CE, C&W, margin, DLR and a loss searched on that model by GP on other
  images, APGD-CE, APGD-DLR and AutoAttack's standard ensemble from torchattacks).

Everything is resumable: the verification saves each image as it ends; the attacks' per-image
outcomes are one table per study.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from lossbook import runner, store
from lossbook.chapters import atras_sweep, paper_arm, transfer
from lossbook.config import RESULTS_DIR, SCALES, check_choice, check_dataset_eps, quiet
from lossbook.core import certify, data, exact
from lossbook.core.attack_registry import attack_names, run_attacks
from lossbook.core.attacks import evaluation_images, pgd
from lossbook.core.losses import RELEASED_FORMULAS, compile_formula, released_loss
from lossbook.core.models import build_model
from lossbook.core.stats import direction, exact_gain, risk_interval
from lossbook.core.train import adversarial_loss, fit, load_model
from lossbook.params import (
    Param,
    common,
    number,
    whole,
    with_name,
)
from lossbook.search.engine import CHECKPOINT_SUFFIX, run_search
from lossbook.search.fitness import Evaluator
from lossbook.search.settings import SEARCH_PRESETS

TRAININGS_EXACT = ("st", "fgsm", "pgd", "at")


@dataclass(frozen=True)
class ExactModel:
    """A network small enough to verify: an MLP on ``dataset`` with ``hidden`` widths and ``training``, trained
    here; or (``net`` "net1") AutoLoss-AR's NET-1 as trained by ``python -m lossbook train --scale paper``."""

    name: str
    dataset: str
    hidden: tuple
    training: str  # st | fgsm (ATRAS: continues from ST) | pgd (PGD-AT from scratch) | at (the paper's PGD-AT)
    net: str = "mlp"

    def __post_init__(self):
        check_choice("training of a verified model", self.training, TRAININGS_EXACT)


MODELS = {m.name: m for m in (
    ExactModel("mnist-mlp64-st", "mnist", (64,), "st"),
    ExactModel("mnist-mlp64-fgsm", "mnist", (64,), "fgsm"),
    ExactModel("mnist-mlp40-fgsm", "mnist", (40,), "fgsm"),
    ExactModel("mnist-mlp8x128-fgsm", "mnist", (8, 128), "fgsm"),
    ExactModel("mnist-mlp32x32-pgd", "mnist", (32, 32), "pgd"),
    ExactModel("cifar10-mlp64-fgsm", "cifar10", (64,), "fgsm"),
    # the paper's own MNIST network at its schedule (160 epochs), standard and PGD adversarial training
    ExactModel("mnist-net1-at", "mnist", (), "at", net="net1"),
    ExactModel("mnist-net1-st", "mnist", (), "st", net="net1"),
)}
#: the paper's networks: verified on the first ``PAPER_NET_IMAGES`` images at the largest eps of ``CURVE_EPS``
#: where at least ``DECIDED_SHARE`` of the first ``CURVE_IMAGES`` images are decided within the time limit
PAPER_NETS = ("mnist-net1-at", "mnist-net1-st")
CURVE_EPS = {"mnist-net1-at": (0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.08, 0.1, 0.13, 0.18),
             "mnist-net1-st": (0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.047)}
CURVE_IMAGES, PAPER_NET_IMAGES, PAPER_NET_TIME_LIMIT, DECIDED_SHARE = 40, 200, 60.0, 0.9
#: PGD-AT of the verified MLP (Madry et al.: adversarial examples only, l_inf, from scratch)
PGD_AT = {"mnist": dict(eps=0.1, steps=10, step_size=0.025), "cifar10": dict(eps=8 / 255, steps=10, step_size=2 / 255)}


@dataclass(frozen=True)
class Study:
    """One verified set: ``model`` under ``norm`` at ``eps`` on ``n_images`` images."""

    model: str
    norm: str
    eps: float
    n_images: int
    time_limit: float  # seconds of solver time per image

    def __post_init__(self):
        check_choice("verified model", self.model, MODELS)
        exact.check_norm(self.norm)
        check_dataset_eps(MODELS[self.model].dataset, self.norm, self.eps)

    def name(self) -> str:
        return f"{self.model}-{self.norm}-eps{self.eps:.4g}"


STUDIES: dict[str, tuple[Study, ...]] = {
    # two radii, so that choosing studies is something a smoke run can show
    "smoke": (Study("mnist-mlp64-fgsm", "linf", 0.05, 12, 5.0), Study("mnist-mlp64-fgsm", "linf", 0.02, 4, 5.0)),
    # ordered by cost; the FGSM-AT MLP at eps 0.1 is the hard one (many images reach the time limit)
    "cpu": (
        Study("mnist-mlp64-st", "linf", 0.1, 500, 60.0),
        Study("mnist-mlp64-st", "linf", 0.065, 200, 60.0),  # where CE-PGD-10 breaks ~70% (AutoLoss-AR's choice)
        Study("mnist-mlp32x32-pgd", "linf", 0.1, 500, 60.0),
        Study("cifar10-mlp64-fgsm", "linf", 8 / 255, 500, 60.0),
        Study("mnist-mlp64-fgsm", "l1", 5.0, 200, 60.0),
        Study("mnist-mlp64-fgsm", "linf", 0.1, 500, 60.0),
        Study("mnist-mlp40-fgsm", "linf", 0.1, 500, 60.0),  # ATRAS's smallest one-hidden-layer MLP
        Study("mnist-mlp8x128-fgsm", "linf", 0.1, 500, 60.0),  # and its narrowest two-hidden-layer one
        # l_2: SCIP with the ball as a quadratic constraint, slow in 784 dimensions (26 of 50 images decided
        # at 30 s each), so 50 images and R as an interval
        Study("mnist-mlp64-fgsm", "l2", 1.0, 50, 120.0),
    ),
    "paper": (),  # the models are tiny: the cpu studies are the chapter's paper scale too
}


def studies(scale: str) -> tuple[Study, ...]:
    check_choice("scale", scale, SCALES)
    return STUDIES[scale] or STUDIES["cpu"]


def study_dir(scale: str, root: Path | None = None) -> Path:
    return (root or RESULTS_DIR / "exact") / ("smoke" if scale == "smoke" else "cpu")


# ------------------------------------------------------------------------------------------------
# The verified models
# ------------------------------------------------------------------------------------------------
def _model_request(spec: ExactModel, cfg) -> dict:
    model = {k: v for k, v in asdict(spec).items() if k != "net"}  # the MLPs' requests predate the field
    return {"model": model, "training": asdict(cfg), **({"pgd_at": PGD_AT[spec.dataset]} if spec.training == "pgd"
                                                        else {})}


def _train(spec: ExactModel, cfg, progress: bool) -> torch.nn.Module:
    x, y, _, _ = atras_sweep.load_splits(cfg)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    model = atras_sweep.make_model(cfg, spec.hidden).train()
    if spec.training in ("st", "fgsm"):
        fit(model, atras_sweep.make_optimizer(cfg, model), x, y, cfg.epochs, cfg.batch_size, gen, desc=f"{spec.name} ST",
            progress=progress)
    if spec.training == "fgsm":
        fit(model, atras_sweep.make_optimizer(cfg, model), x, y, cfg.adv_epochs, cfg.batch_size, gen,
            atras_sweep.fgsm_loss(cfg.eps, cfg.at_mix), f"{spec.name} FGSM-AT", progress)
    if spec.training == "pgd":
        fit(model, atras_sweep.make_optimizer(cfg, model), x, y, cfg.epochs + cfg.adv_epochs, cfg.batch_size, gen,
            adversarial_loss(_pgd_adversary(spec), mix=1.0), f"{spec.name} PGD-AT", progress)
    return model.eval()


def _pgd_adversary(spec: ExactModel):
    at = PGD_AT[spec.dataset]

    def adversary(model, xb, yb):
        return pgd(model, xb, yb, norm="linf", eps=at["eps"], steps=at["steps"], step_size=at["step_size"],
                   schedule="constant", mode="final", seed=int(yb.sum())).x_adv[0]
    return adversary


def load_verified_model(name: str, scale: str, train: bool = True, progress: bool = False,
                        root: Path | None = None) -> torch.nn.Module:
    """A verified model (trained as :data:`MODELS` says at ``scale``, saved as arrays with its record)."""
    check_choice("verified model", name, MODELS)
    spec = MODELS[name]
    if spec.net != "mlp":  # trained by the train command at the paper's schedule, never here
        return load_model(spec.dataset, spec.net, spec.training, "paper", device=torch.device("cpu")).eval()
    cfg = atras_sweep.atras_config(spec.dataset, "smoke" if scale == "smoke" else "cpu")
    path = study_dir(scale, root) / "models" / f"{name}.npz"
    request = _model_request(spec, cfg)
    if not store.matches(path, request):
        if not train:
            raise store.ResultError(f"{path}: verified model {name} is not trained at scale {scale}")
        model = _train(spec, cfg, progress)
        store.save(path, {k: v.numpy() for k, v in model.state_dict().items()}, request)
    weights = store.load(path, request)
    model = build_model(spec.dataset, "mlp", hidden=list(spec.hidden))
    model.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in weights.items()})
    return model.eval()


# ------------------------------------------------------------------------------------------------
# Every attack, per image
# ------------------------------------------------------------------------------------------------
def attack_outcomes(model, x: torch.Tensor, y: torch.Tensor, norm: str, eps: float, searched_loss=None,
                    seed: int = 0, progress: bool = False, released: bool = False) -> pd.DataFrame:
    """One boolean column per attack of the registry under ``norm`` (True: that attack broke the image), one
    row per image; the searched PGD loss only where ``searched_loss`` is given; with ``released``, PGD-10
    with each of the AutoLoss-AR authors' released losses too (:func:`released_names`)."""
    names = attack_names(norm, searched=searched_loss is not None)
    table = run_attacks(names, model, x, y, norm, eps, searched_loss, seed=seed, progress=progress)
    if released:
        res = pgd(model, x, y, [released_loss(k) for k in RELEASED_FORMULAS], norm=norm, eps=eps, steps=10, seed=seed)
        for k, name in enumerate(released_names()):
            table[name] = res.broken[k].numpy()
    return table


def released_names() -> list[str]:
    """The columns of PGD-10 with the authors' released losses (their repository's ``losses.py``)."""
    return [f"PGD-10 released {k}" for k in RELEASED_FORMULAS]


def attack_columns(table: pd.DataFrame, norm: str) -> list[str]:
    """The attack columns of a study's table, in the registry's order, the released losses after them."""
    return [a for a in attack_names(norm) + released_names() if a in table.columns]


def searched_loss_for(model, study: Study, scale: str, root: Path | None = None, progress: bool = False):
    """A loss searched by GP on this model (on the test images after the verified ones), saved as a run. For
    the paper's networks: the paper arm's selected loss of the same setting (searched on that very model, at the
    arm's eps)."""
    cfg = SEARCH_PRESETS["smoke" if scale == "smoke" else "cpu"]
    spec = MODELS[study.model]
    if spec.net != "mlp":
        found = transfer.searched_loss(f"paper-arm:{spec.dataset}-{spec.net}-{spec.training}-{study.norm}", "cpu")
        return found.loss(), {"best": found.formula, "source": found.source, "eps": found.setting.eps}
    xs, ys, _ = evaluation_images(model, spec.dataset, cfg.n_images, skip=study.n_images)
    target = _Target(study.name(), study.norm, study.eps)
    path = study_dir(scale, root) / f"{study.name()}-search.json"
    request = {"study": asdict(study), "gp": cfg.identity(), "images_after": study.n_images, "seed": 0}

    def compute():
        ev = Evaluator(model, xs, ys, target, steps=cfg.steps, seed=0)
        ckpt = path.with_suffix(CHECKPOINT_SUFFIX)
        rec = run_search(ev, cfg, 0, checkpoint=ckpt, progress=progress, desc=f"GP on {study.model}")
        ckpt.unlink(missing_ok=True)
        return rec
    rec = store.cached(path, request, compute)
    return compile_formula(rec["best"]), rec


@dataclass(frozen=True)
class _Target:
    """What the GP's evaluator attacks (the search's Setting, for a verified model)."""

    name_: str
    norm: str
    eps: float

    def name(self) -> str:
        return self.name_


# ------------------------------------------------------------------------------------------------
# One study: exact verdicts + attacks, then E per attack
# ------------------------------------------------------------------------------------------------
def exact_request(study: Study, model) -> dict:
    """What a study's verdicts answer: each image's verdict depends on the model (its weights' hash), norm, eps,
    time limit and the rule's settings, not on how many images are asked (a larger study reuses the images of a
    smaller one)."""
    return {"study": {k: v for k, v in asdict(study).items() if k != "n_images"}, "weights": exact.network_hash(model),
            "images": "first correctly classified test images",
            "rule": exact.settings(study.norm, backward=exact.uses_backward(model))}


def exact_path(study: Study, scale: str, root: Path | None = None) -> Path:
    return study_dir(scale, root) / f"{study.name()}-exact.json"


def run_study(study: Study, scale: str, root: Path | None = None, progress: bool = True, backend: str = "local",
              address: str | None = None, shard: int = 50) -> pd.DataFrame:
    """Verify every image of ``study`` and run every attack on them; one row per image (resumable). With
    ``backend="ray"`` the verification runs as Ray tasks over shards of images (:mod:`lossbook.runner`)."""
    check_choice("backend", backend, ("local", "ray"))
    spec = MODELS[study.model]
    model = load_verified_model(study.model, scale, progress=progress, root=root)
    x, y, idx = evaluation_images(model, spec.dataset, study.n_images)
    folder = study_dir(scale, root)
    request = exact_request(study, model)
    if backend == "ray":
        verify_study_ray(study, scale, root, address, shard=shard, progress=progress)
    rows = exact.verify_set(model, x, y, study.norm, study.eps, exact_path(study, scale, root), request,
                            indices=idx.tolist(), time_limit=study.time_limit, progress=progress)
    loss, _ = searched_loss_for(model, study, scale, root, progress)
    path = folder / f"{study.name()}-outcomes.csv"

    def compute():
        table = pd.DataFrame([{**{k: r[k] for k in ("index", "label", "status", "by", "seconds", "unstable", "stable")},
                               "milp_proofs": r["ruled_out"].get("milp", 0),
                               "float32_fooled": FOOLED[r.get("float32_fooled")]}
                              for r in rows])
        return pd.concat([table, attack_outcomes(model, x, y, study.norm, study.eps, loss, released=released)], axis=1)
    released = spec.net != "mlp"
    attacks = attack_names(study.norm) + (released_names() if released else [])
    table = store.cached(path, {**request, "n_images": study.n_images, "attacks": attacks}, compute)
    check_soundness(table, study.name())
    return table


def check_soundness(table: pd.DataFrame, what: str = "") -> None:
    """An image proven robust that some attack broke would be a bug in the verifier or the attack."""
    attacks = [c for c in table.columns if c in set().union(*(attack_names(n) for n in exact.NORMS_EXACT), released_names())]
    bad = table[(table["status"] == "robust") & table[attacks].any(axis=1)]
    if len(bad):
        raise AssertionError(f"{what}: images {bad['index'].tolist()} are proven robust but an attack broke them")


# ------------------------------------------------------------------------------------------------
# The paper's own network: how far exact verification reaches, then every attack at that eps
# ------------------------------------------------------------------------------------------------
def curve_studies(name: str) -> list[Study]:
    """The studies of the decided-share curve of a paper network: its first ``CURVE_IMAGES`` images at each
    eps of :data:`CURVE_EPS` (the main study at the chosen eps resumes from the same files)."""
    check_choice("paper network", name, PAPER_NETS)
    return [Study(name, "linf", e, CURVE_IMAGES, PAPER_NET_TIME_LIMIT) for e in CURVE_EPS[name]]


def eps_curve(name: str, scale: str = "cpu", compute: bool = False, progress: bool = False,
              root: Path | None = None) -> pd.DataFrame:
    """Per eps of the curve: robust, vulnerable and unknown images, the decided share with its 95% interval,
    and the solver's median time; verified where missing with ``compute`` (resumable), else only the eps
    whose images are all saved. The radii are taken in increasing order and the curve stops after the first
    one with less than ``DECIDED_SHARE`` decided (a larger radius cannot be chosen, and its unknown images
    cost the whole time limit each)."""
    rows = []
    model = load_verified_model(name, scale, train=False, root=root)
    spec = MODELS[name]
    x, y, idx = evaluation_images(model, spec.dataset, CURVE_IMAGES)
    for st in curve_studies(name):
        path, request = exact_path(st, scale, root), exact_request(st, model)
        saved = store.load(path, request) if store.matches(path, request) else []
        if compute:
            saved = exact.verify_set(model, x, y, st.norm, st.eps, path, request, indices=idx.tolist(),
                                     time_limit=st.time_limit, progress=progress)
        mine = [r for r in saved if r["index"] in set(idx.tolist())]
        if len(mine) < CURVE_IMAGES:
            continue
        count = {k: sum(r["status"] == k for r in mine) for k in exact.STATUSES}
        decided = np.array([r["status"] != "unknown" for r in mine])
        lo, hi = risk_interval(decided)
        rows.append({"eps": st.eps, "images": len(mine), **count, "decided share": decided.mean(),
                     "decided 95% low": lo, "decided 95% high": hi,
                     "solver median s": float(np.median([r["seconds"] for r in mine if r["by"] != "attack"] or [0.0])),
                     "unstable ReLUs (median)": float(np.median([r["unstable"] for r in mine if r["by"] != "attack"]
                                                                or [0.0]))})
        if decided.mean() < DECIDED_SHARE:
            break
    return pd.DataFrame(rows)


def curve_complete(name: str, curve: pd.DataFrame) -> bool:
    """Whether a curve has every radius it needs: all of them, or up to the first below ``DECIDED_SHARE``."""
    return len(curve) == len(CURVE_EPS[name]) or (len(curve) > 0 and curve["decided share"].iloc[-1] < DECIDED_SHARE)


def chosen_eps(curve: pd.DataFrame) -> float | None:
    """The largest eps of the curve with at least ``DECIDED_SHARE`` of its images decided (None if none)."""
    ok = curve[curve["decided share"] >= DECIDED_SHARE] if len(curve) else curve
    return float(ok["eps"].max()) if len(ok) else None


def paper_net_study(name: str, scale: str = "cpu", root: Path | None = None) -> Study | None:
    """The main study of a paper network: ``PAPER_NET_IMAGES`` images at the curve's chosen eps (None until
    the whole curve is saved)."""
    curve = eps_curve(name, scale, root=root)
    if not curve_complete(name, curve):
        return None
    e = chosen_eps(curve)
    return None if e is None else Study(name, "linf", e, PAPER_NET_IMAGES, PAPER_NET_TIME_LIMIT)


def run_paper_net(name: str, scale: str = "cpu", progress: bool = True, root: Path | None = None) -> pd.DataFrame | None:
    """The curve (verified where missing), then the main study with every attack at the chosen eps."""
    eps_curve(name, scale, compute=True, progress=progress, root=root)
    st = paper_net_study(name, scale, root)
    return None if st is None else run_study(st, scale, root=root, progress=progress)


def paper_net_results(scale: str, root: Path | None = None) -> dict:
    """{paper network: (its decided-share curve, its main study or None, that study's table or None)} for the
    networks whose curve has at least one saved eps (read only: the paper networks take hours)."""
    out = {}
    for name in PAPER_NETS:
        try:
            curve = eps_curve(name, scale, root=root)
        except FileNotFoundError:  # the paper's model is not trained in this checkout
            continue
        if not len(curve):
            continue
        st = paper_net_study(name, scale, root)
        table = load_study(st, scale, root) if st is not None else None
        out[name] = (curve, st, table if table is not None and len(table) == st.n_images else None)
    return out


def curve_table(curve: pd.DataFrame) -> pd.DataFrame:
    """A decided-share curve as the chapter shows it."""
    return pd.DataFrame({"eps": curve["eps"], "images": curve["images"], "robust": curve["robust"],
                         "vulnerable": curve["vulnerable"], "unknown": curve["unknown"],
                         "decided (95% interval)": [f"{d:.2f} [{lo:.2f}, {hi:.2f}]" for d, lo, hi in
                                                    zip(curve["decided share"], curve["decided 95% low"],
                                                        curve["decided 95% high"])],
                         "solver median s": curve["solver median s"].round(1),
                         "unstable ReLUs (median)": curve["unstable ReLUs (median)"].round(0).astype(int)})


def paper_net_sentence(name: str, curve: pd.DataFrame, st: Study | None, table: pd.DataFrame | None) -> str:
    """What the study of a paper network found, in one paragraph (Markdown)."""
    e = chosen_eps(curve) if curve_complete(name, curve) else None
    head = f"**{name}** (the paper's NET-1, 160 epochs): "
    if not curve_complete(name, curve):
        return head + (f"the curve has {len(curve)} of its {len(CURVE_EPS[name])} radii so far; "
                       f"`python -m lossbook exact --paper-net {name}` continues it.")
    if e is None:
        return head + f"fewer than {DECIDED_SHARE:.0%} of the images are decided even at eps {min(CURVE_EPS[name])}."
    if table is None:
        return head + (f"{DECIDED_SHARE:.0%} of the curve's images are decided up to eps {e:g}; the study of "
                       f"{PAPER_NET_IMAGES} images at that eps is not complete yet.")
    g = gap_table(table, st.norm).set_index("attack")
    s = exact_summary(table)
    r = f"R = {s['R_low']:.3f}" if s["unknown"] == 0 else f"R in [{s['R_low']:.3f}, {s['R_high']:.3f}]"
    share = 1 - s["unknown"] / s["images"]
    decided = f"{share:.1%} of them decided" + (
        f", below the {DECIDED_SHARE:.0%} that the 40-image curve met: on 200 images the criterion does not hold"
        if share < DECIDED_SHARE else "")
    if e < 0.5 / 255:
        decided += (f"; eps {e:g} is less than half a grey level (0.5/255), so no 8-bit image lies in the ball "
                    f"besides the image itself")
    decided += (f"; the solver took a median {s['milp_median_s']:.1f} s and at most {s['milp_max_s']:.0f} s on the "
                f"images no attack broke")
    ratio = radius_ratio(name, curve)
    scale_note = (f" The paper arm judges this setting at eps {arm_eps(name):g}, {ratio:.0f} times larger: exact risk "
                  f"does not reach the paper's regime on this network." if ratio else "")
    if all_attacks_tie(g):
        return head + (f"at eps {e:g}, the largest radius of the curve with {DECIDED_SHARE:.0%} of its images decided, "
                       f"{r} on {s['images']} images ({decided}). All {len(g) - 1} attacks find the same "
                       f"R'' = {g.loc['any attack', 'R' + chr(39) * 2]:.3f}, so E = {e_text(g.loc['any attack'])} pp for "
                       f"every one of them: at this radius no attack, searched, released or AutoAttack, can be told "
                       f"apart from CE, and what E could still be is set by the unknown images alone. This says "
                       f"nothing for or against AutoLoss-AR's claim, which is about much larger radii.{scale_note}")
    return head + (f"at eps {e:g}, the largest radius of the curve with {DECIDED_SHARE:.0%} of its images decided, "
                   f"{r} on {s['images']} images ({decided}); PGD-10 with CE misses {e_text(g.loc['PGD-10 ce'])} pp, "
                   f"the arm's searched loss {e_text(g.loc['PGD-10 searched'])} pp; {best_attack_text(g)}.{scale_note}")


def scope_note(scale: str, root: Path | None = None) -> str:
    """The takeaway's "how far this is from the papers": which networks are verified, and how much smaller the
    paper networks' verified radii are than the paper arm's eps (read from the saved curves)."""
    nets = paper_net_results(scale, root)
    ratios = [r for r in (radius_ratio(name, curve) for name, (curve, _, _) in nets.items()) if r]
    where = (f"only at radii {min(ratios):.0f} to {max(ratios):.0f} times smaller than the paper arm's eps"
             if len(ratios) > 1 else f"only at a radius {ratios[0]:.0f} times smaller than the paper arm's eps"
             if ratios else "not yet to a chosen radius")
    cnns = (f"of AutoLoss-AR's CNNs only MNIST NET-1 is verified, and {where} (NET-2 and CIFAR-10's CNNs are not "
            f"verified)" if nets else "none of AutoLoss-AR's CNNs is verified at this scale")
    return ("Both papers attack without knowing R. Most networks verified here are small ReLU MLPs of the ATRAS "
            f"sweep (MNIST and CIFAR-10); {cnns}.")


def radius_ratio(name: str, curve: pd.DataFrame) -> float | None:
    """How many times the paper arm's eps exceeds the largest radius the curve decides (None: either is missing)."""
    e = chosen_eps(curve) if curve_complete(name, curve) else None
    arm = arm_eps(name)
    return arm / e if e and arm else None


def arm_eps(name: str) -> float | None:
    """The eps at which chapter 3's paper arm judged the l_inf setting of a paper network (None if not judged)."""
    summary = paper_arm.load_summary("paper")
    setting = f"{name}-linf"
    if summary is None or setting not in set(summary.setting):
        return None
    return float(summary.set_index("setting").loc[setting, "eps"])


def paper_net_saved_studies(scale: str = "cpu", root: Path | None = None) -> list[Study]:
    """Every saved study of the paper networks, one per file: a curve radius (its first ``CURVE_IMAGES``
    images) or, at the chosen eps, the main study (which resumed from that radius's file)."""
    out = []
    for name in PAPER_NETS:
        main = None
        if all(exact_path(st, scale, root).exists() for st in curve_studies(name)[:1]):
            main = paper_net_study(name, scale, root)
        for st in curve_studies(name):
            if exact_path(st, scale, root).exists():
                out.append(main if main is not None and main.eps == st.eps else st)
    return out


#: the parts of a study's rule that name solver versions: recorded, but not compared by the audit
SOLVER_VERSION_KEYS = ("solver", "l2_solver")


#: robust images per study whose LP-dual proofs the audit derives again by default (the first ones; the command's
#: ``--lp-dual all`` takes every one)
AUDIT_LP_DUAL = 5


def audit_study(study: Study, scale: str, root: Path | None = None, lp_dual: int | None = AUDIT_LP_DUAL) -> list[str]:
    """Everything wrong with a committed study, checked without trusting a solver (empty: it passes): the
    record was made for these weights under today's rule and settings (:func:`exact_request`; the solvers'
    versions are recorded but not compared); every row passes
    :func:`lossbook.core.exact.audit_rows` on the study's own images (found again from the dataset); the
    outcomes table carries the same verdicts; no image proven robust was broken by an attack. The LP-dual proofs
    of the first ``lp_dual`` robust images that have any are derived again (None: of all)."""
    path = exact_path(study, scale, root)
    if not path.exists():
        return [f"{study.name()}: not run at scale {scale}"]
    model = load_verified_model(study.model, scale, train=False, root=root)
    wanted = exact_request(study, model)
    saved = store.record(path).get("request")
    if isinstance(saved, dict) and isinstance(saved.get("rule"), dict):
        # the solvers' versions made the verdicts but do not enter the audit (it trusts no solver): an auditor
        # with other versions installed checks the same study
        wanted["rule"].update({k: saved["rule"][k] for k in SOLVER_VERSION_KEYS if k in saved["rule"]})
    if saved != store.normalize(wanted):
        keys = [d.split("=")[0] for d in store.differences(saved, store.normalize(wanted))]
        return [f"{study.name()}: made under other settings or weights (differs in: {', '.join(keys)}); "
                f"rerun it with `python -m lossbook exact --studies {study.name()}`"]
    rows = store.load(path, wanted)
    x, y, idx = evaluation_images(model, MODELS[study.model].dataset, study.n_images)
    images = {int(i): (xi.reshape(-1).double().numpy(), int(yi)) for i, xi, yi in zip(idx, x, y)}
    net = exact.network_ops(model, tuple(x.shape[1:]))
    backward = "backward_bounds" in (saved.get("rule") or {})
    problems = [f"{study.name()}: {p}" for p in exact.audit_rows(net, rows, images, study.norm, study.eps, backward,
                                                                   lp_dual=lp_dual)]
    missing = sorted(set(images) - {r["index"] for r in rows})
    if missing:
        problems.append(f"{study.name()}: {len(missing)} of the study's images have no verdict (first: {missing[0]})")
    table = load_study(study, scale, root)
    if table is not None:
        by_index = {r["index"]: r["status"] for r in rows}
        differ = [int(i) for i, s in zip(table["index"], table["status"]) if by_index.get(int(i)) != s]
        if differ:
            problems.append(f"{study.name()}: the outcomes table disagrees with the verdicts on images {differ[:5]}")
        try:
            check_soundness(table, study.name())
        except AssertionError as e:
            problems.append(str(e))
    return problems


def verdict_changes(old: pd.Series, new: pd.Series) -> dict:
    """How the verdicts of the images in both (indexed by image) moved: images, changed, and which way."""
    common = old.index.intersection(new.index)
    pairs = pd.crosstab(old[common], new[common])
    changed = {f"{a} -> {b}": int(pairs.loc[a, b]) for a in pairs.index for b in pairs.columns
               if a != b and pairs.loc[a, b]}
    return {"images": len(common), "changed": sum(changed.values()),
            "which": ", ".join(f"{k}: {v}" for k, v in changed.items()) or "none"}


def decision_changes(results: dict, scale: str, root: Path | None = None) -> pd.DataFrame | None:
    """Per study, how many images changed verdict when the auditable rule replaced the earlier one (the
    earlier verdicts are kept in ``decisions-before-audit-rule.csv``); None where that file is absent."""
    path = study_dir(scale, root) / "decisions-before-audit-rule.csv"
    if not path.exists():
        return None
    before = store.load(path)
    return pd.DataFrame([{"study": name, **verdict_changes(before[before["study"] == name].set_index("index")["status"],
                                                           t.set_index("index")["status"])}
                         for name, (_, t) in results.items()])


#: the NET-1 verdicts made with interval and LP bounds only, kept when back-substituted bounds replaced them
BEFORE_BACKWARD = "net1-decisions-before-backward-bounds.csv"


def backward_changes(scale: str, root: Path | None = None) -> pd.DataFrame | None:
    """Per NET-1 study verified both before and after back-substituted bounds were switched on (the saved
    study's request says it was made with them): how many of the images in both changed verdict. A robust
    image turning vulnerable (or back) would be a bug; unknown turning decided is what the bounds are for.
    None where the earlier verdicts are not kept."""
    path = study_dir(scale, root) / BEFORE_BACKWARD
    if not path.exists():
        return None
    before, rows, models = store.load(path), [], {}
    for (name, eps), old in before.groupby(["model", "eps"], sort=False):
        if name not in models:
            models[name] = load_verified_model(name, scale, train=False, root=root)
        st = Study(name, "linf", float(eps), PAPER_NET_IMAGES, PAPER_NET_TIME_LIMIT)
        request = exact_request(st, models[name])
        if not request["rule"].get("backward_bounds") or not store.matches(exact_path(st, scale, root), request):
            continue
        new = pd.DataFrame(store.load(exact_path(st, scale, root), request)).set_index("index")["status"]
        rows.append({"network": name, "eps": float(eps), **verdict_changes(old.set_index("index")["status"], new)})
    return pd.DataFrame(rows, columns=["network", "eps", "images", "changed", "which"])


def load_study(study: Study, scale: str, root: Path | None = None) -> pd.DataFrame | None:
    """The saved table of a study, or None where it was not run at this scale."""
    path = study_dir(scale, root) / f"{study.name()}-outcomes.csv"
    return store.load(path) if path.exists() else None


def load_exact_rows(study: Study, scale: str, root: Path | None = None) -> list[dict]:
    return store.load(study_dir(scale, root) / f"{study.name()}-exact.json")


def gap_table(table: pd.DataFrame, norm: str) -> pd.DataFrame:
    """Per attack: R'' and E = R - R'' (bounds where images are unknown), with 95% intervals over the images.

    The interval of E is Clopper-Pearson's on the count of images that are vulnerable (or unknown, for
    the upper end) and that the attack did not break: E is the share of such images."""
    n = len(table)
    vuln = (table["status"] == "vulnerable").to_numpy()
    unknown = (table["status"] == "unknown").to_numpy()
    names = attack_columns(table, norm)
    any_attack = table[names].any(axis=1).to_numpy()
    rows = []
    for name, broken in [(a, table[a].to_numpy()) for a in names] + [("any attack", any_attack)]:
        missed, maybe_missed = vuln & ~broken, (vuln | unknown) & ~broken
        missed_low, missed_high = int(missed.sum()), int(maybe_missed.sum())
        lo, hi = risk_interval(missed)[0], risk_interval(maybe_missed)[1]
        rows.append({"attack": name, "R''": broken.mean(), "E_low": missed_low / n, "E_high": missed_high / n,
                     "E_ci_low": lo, "E_ci_high": hi})
    return pd.DataFrame(rows)


def e_text(row) -> str:
    """E of one row of :func:`gap_table` in pp: a number, or "low to high" where images are unknown."""
    low, high = 100 * row["E_low"], 100 * row["E_high"]
    return f"{low:.1f}" if row["E_low"] == row["E_high"] else f"{low:.1f} to {high:.1f}"


def all_attacks_tie(g: pd.DataFrame) -> bool:
    """Whether every attack of a :func:`gap_table` (indexed by attack) has the same E bounds as any attack."""
    attacks = g.drop(index="any attack")
    return bool((attacks[["E_low", "E_high"]] == g.loc["any attack", ["E_low", "E_high"]]).all(axis=None))


def best_attack_text(g: pd.DataFrame) -> str:
    """The best single attack and its E (a range where images are unknown), or that all of them tie."""
    if all_attacks_tie(g):
        return f"all {len(g) - 1} attacks tie at E = {e_text(g.loc['any attack'])} pp"
    best = g.drop(index="any attack")["E_high"].idxmin()
    return f"the best single attack, {best}, misses {e_text(g.loc[best])} pp"


def exact_summary(table: pd.DataFrame) -> dict:
    """R (interval), counts, solve times and unstable neurons of one study."""
    n = len(table)
    count = {s: int((table["status"] == s).sum()) for s in exact.STATUSES}
    solved = table[table["by"] != "attack"]
    return {"images": n, **count, "R_low": count["vulnerable"] / n, "R_high": (count["vulnerable"] + count["unknown"]) / n,
            "by_attack": int((table["by"] == "attack").sum()), "by_milp": len(solved),
            "milp_median_s": float(solved["seconds"].median()) if len(solved) else float("nan"),
            "milp_max_s": float(solved["seconds"].max()) if len(solved) else float("nan"),
            "unstable_share": float((solved["unstable"] / (solved["unstable"] + solved["stable"])).median())
            if len(solved) else float("nan")}


def only_exact(table: pd.DataFrame, norm: str) -> pd.DataFrame:
    """The images that are vulnerable but that no attack broke (found by the solver only)."""
    names = attack_columns(table, norm)
    return table[(table["status"] == "vulnerable") & ~table[names].any(axis=1)]


# ------------------------------------------------------------------------------------------------
# The verification on a Ray cluster (lossbook.runner): one task per shard of a study's images
# ------------------------------------------------------------------------------------------------
def shard_path(study, scale: str, first: int, root: Path | None) -> Path:
    return study_dir(scale, root) / "shards" / f"{study.name()}-from{first}.json"


def _exact_task(study, scale: str, first: int, last: int, root: str | None) -> list[dict]:
    """Verify images ``first:last`` of a study on a worker, saved image by image in the shard's own file
    (a retried task resumes there)."""
    root_p = Path(root) if root else None
    model = load_verified_model(study.model, scale, train=False, root=root_p)
    x, y, idx = evaluation_images(model, MODELS[study.model].dataset, study.n_images)
    path = shard_path(study, scale, first, root_p)
    events = path.parent
    runner.log_event(events, "", study=study.name(), first=first, event="resume" if path.exists() else "start")
    rows = exact.verify_set(model, x[first:last], y[first:last], study.norm, study.eps, path, exact_request(study, model),
                            indices=idx[first:last].tolist(), time_limit=study.time_limit, progress=False)
    runner.log_event(events, "", study=study.name(), first=first, event="done")
    return rows


def verify_study_ray(study, scale: str, root: Path | None = None, address: str | None = None, shard: int = 50,
                     progress: bool = True, max_retries: int = 3) -> list[dict]:
    """The exact verification of a study as Ray tasks over shards of ``shard`` images; the rows, merged in
    image order, are saved where the local path keeps them (so ``run_study`` then only runs the attacks)."""
    model = load_verified_model(study.model, scale, root=root)  # trained once, here, before the tasks read it
    with runner.cluster(address) as ray:
        task = runner.remote(ray, _exact_task, max_retries, gpu=False)
        refs = [task.remote(study, scale, a, min(a + shard, study.n_images), str(root) if root else None)
                for a in range(0, study.n_images, shard)]
        rows = []
        for _ in tqdm(range(len(refs)), desc=f"{study.name()} on Ray ({len(ray.nodes())} nodes)", **quiet(progress)):
            ready, refs = ray.wait(refs, num_returns=1)
            rows += ray.get(ready[0])
    path, request = exact_path(study, scale, root), exact_request(study, model)
    saved = store.load(path, request) if store.matches(path, request) else []
    merged = {r["index"]: r for r in saved + rows}
    store.save(path, list(merged.values()), request)
    return rows


# ------------------------------------------------------------------------------------------------
# What the chapter shows
# ------------------------------------------------------------------------------------------------
def select_studies(spec: str, scale: str, n_images: int = 0, time_limit: float = 0.0) -> list[Study]:
    """The scale's studies named by ``spec`` ("all" or comma-separated study names), with the number of
    images and the time limit overridden where given (> 0)."""
    known = {s.name(): s for s in studies(scale)}
    names = list(known) if spec == "all" else [s.strip() for s in spec.split(",") if s.strip()]
    for n in names:
        check_choice(f"study at scale {scale}", n, known)
    return [replace(known[n], **({"n_images": n_images} if n_images else {}),
                    **({"time_limit": float(time_limit)} if time_limit else {})) for n in names]


def chapter_studies(chosen: list[Study], scale: str, compute: bool, progress: bool = False, root: Path | None = None):
    """{study name: (study, table)} of the saved (or, with ``compute``, computed) studies, and the names
    of those not available at this scale."""
    out, missing = {}, []
    for st in chosen:
        table = run_study(st, scale, root=root, progress=progress) if compute else load_study(st, scale, root)
        if table is None or len(table) != st.n_images:
            missing.append(st.name())
        else:
            out[st.name()] = (st, table)
    return out, missing


def risk_table(results: dict) -> pd.DataFrame:
    """Table 7.1: per study, the exact verdicts, R with its 95% interval, solve times and unstable neurons."""
    rows = []
    for name, (st, t) in results.items():
        s = exact_summary(t)
        vuln, maybe = (t["status"] == "vulnerable").to_numpy(), (t["status"] != "robust").to_numpy()
        rows.append({"study": name, "images": s["images"], "robust": s["robust"], "vulnerable": s["vulnerable"],
                     "unknown": s["unknown"], "R": f"{s['R_low']:.3f}" if s["unknown"] == 0 else
                     f"[{s['R_low']:.3f}, {s['R_high']:.3f}]",
                     "R 95% interval": "[{:.3f}, {:.3f}]".format(risk_interval(vuln)[0], risk_interval(maybe)[1]),
                     "decided by attack": s["by_attack"], "solver median s": round(s["milp_median_s"], 1),
                     "solver max s": round(s["milp_max_s"], 1), "unstable neurons (median share)":
                     round(s["unstable_share"], 3), "time limit s": st.time_limit})
    return pd.DataFrame(rows)


#: how the outcomes table writes whether the float32 model misclassifies an image's witness (CSV-safe)
FOOLED = {True: "yes", False: "no", None: "-"}


def proof_table(results: dict) -> pd.DataFrame:
    """Table 7.5: per study, how each verdict was reached -- vulnerable by an attack's witness or the solver's;
    robust with every wrong class ruled out in float64 arithmetic alone (interval bounds, LP bounds from the
    dual) or with at least one class needing the MILP's infeasibility; unknown at the time limit or because
    the maximum margin lies within delta of 0; and R if the MILP's infeasibility is not taken as proof (those
    robust images counted unknown)."""
    rows = []
    for name, (_, t) in results.items():
        st, by = t["status"], t["by"]
        milp = t["milp_proofs"] if "milp_proofs" in t.columns else pd.Series(0, index=t.index)
        rows.append({"study": name, "vulnerable: attack's witness": int(((st == "vulnerable") & (by == "attack")).sum()),
                     "vulnerable: solver's witness": int(((st == "vulnerable") & (by == "milp")).sum()),
                     "robust: float64 proofs only": int(((st == "robust") & (milp == 0)).sum()),
                     "robust: some class by MILP": int(((st == "robust") & (milp > 0)).sum()),
                     "unknown: time limit": int(((st == "unknown") & (by == "time limit")).sum()),
                     "unknown: within delta": int(((st == "unknown") & (by == "margin")).sum()),
                     "R if no MILP proof is taken": _r_text((st == "vulnerable").sum(),
                                                            ((st == "unknown") | ((st == "robust") & (milp > 0))).sum(),
                                                            len(t)),
                     "witnesses the float32 model also misclassifies": (
                         f"{int((t['float32_fooled'] == 'yes').sum())} of {int((st == 'vulnerable').sum())}"
                         if "float32_fooled" in t.columns else "not recorded")})
    return pd.DataFrame(rows)


def _r_text(vulnerable: int, unknown: int, n: int) -> str:
    """R as a number, or as the interval the unknown images leave."""
    return f"{vulnerable / n:.3f}" if not unknown else f"[{vulnerable / n:.3f}, {(vulnerable + unknown) / n:.3f}]"


def audit_sentence(results: dict, scale: str, root: Path | None = None) -> str:
    """What ``python -m lossbook audit`` finds on the chapter's studies and the paper networks' saved studies,
    as one Markdown sentence."""
    if not results:
        return ""
    nets = paper_net_saved_studies(scale, root)
    problems = [p for st in [st for st, _ in results.values()] + nets for p in audit_study(st, scale, root)]
    witnesses = (sum(int((t["status"] == "vulnerable").sum()) for _, t in results.values())
                 + sum(r["status"] == "vulnerable" for st in nets for r in load_exact_rows(st, scale, root)))
    if problems:
        shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
        return f"**The audit fails** on {len(problems)} point(s): {shown}."
    return (f"`python -m lossbook audit --scale {scale}` re-checks all {len(results) + len(nets)} studies "
            f"({len(nets)} of them on the paper's NET-1) without trusting a solver: "
            f"{witnesses} witnesses (each in the ball and the box exactly, each with a certified margin >= 0), the "
            f"classes each robust image rules out by bounds (derived again), the LP-dual proofs of the first "
            f"{AUDIT_LP_DUAL} robust images per study that have any (HiGHS finds the duals again; the bound is "
            f"checked from them), that every other wrong class names a proof (the MILP proofs are not stored), and "
            f"the rule recorded with each study. It passes.")


def float32_check(study: Study, scale: str, root: Path | None = None) -> dict:
    """:func:`lossbook.core.exact.float32_carried` on a saved study's robust images: whether the float32
    PyTorch model is proven robust there too."""
    model = load_verified_model(study.model, scale, train=False, root=root)
    x, y, idx = evaluation_images(model, MODELS[study.model].dataset, study.n_images)
    images = {int(i): (xi.reshape(-1).double().numpy(), int(yi)) for i, xi, yi in zip(idx, x, y)}
    rows = store.load(exact_path(study, scale, root), exact_request(study, model))  # made for these weights and rule
    return exact.float32_carried(model, rows, images, study.norm, study.eps, tuple(x.shape[1:]))


#: what the float32 check's saved result depends on besides the studies' verdicts (bump when the bound changes)
FLOAT32_CHECK_VERSION = 3


def float32_checks(studies_: list[Study], scale: str, root: Path | None = None) -> dict:
    """{study name: :func:`float32_check`} for saved studies, kept in ``float32-check.json`` for the verdicts it
    was made from (each study's verdict file by its hash and request, which names the weights and the rule):
    minutes for the NET-1 studies' back-substitution."""
    chosen = [st for st in studies_ if exact_path(st, scale, root).exists()]
    records = {st.name(): store.record(exact_path(st, scale, root)) for st in chosen}
    request = {"what": "float32 check of the robust verdicts", "version": FLOAT32_CHECK_VERSION,
               "verdicts": {k: {"sha256": r.get("sha256"), "request": r.get("request")} for k, r in records.items()}}
    return store.cached(study_dir(scale, root) / "float32-check.json", request,
                        lambda: {st.name(): float32_check(st, scale, root) for st in chosen})


def float32_sentence(results: dict, scale: str, root: Path | None = None) -> str:
    """Whether the robust verdicts of the chapter's studies and the paper networks' carry over to the float32
    model, as one Markdown sentence."""
    chosen = [st for st, _ in results.values()] + paper_net_saved_studies(scale, root)
    checks = {k: c for k, c in float32_checks(chosen, scale, root).items() if c["robust"]}
    if not checks:
        return ""
    robust, carried = sum(c["robust"] for c in checks.values()), sum(c["carried"] for c in checks.values())
    nets = {k: c for k, c in checks.items() if k.startswith(tuple(PAPER_NETS))}
    medians = [c["median_ratio"] for c in checks.values() if c["carried"] < c["robust"]]
    text = (f"Do robust verdicts hold for the float32 PyTorch model (on a CPU)? A worst-case bound on its rounding "
            f"(`exact.float32_logit_error`: Higham's gamma_n, module by module) proves it for {carried} of the "
            f"{robust} robust images of {len(checks)} studies")
    if carried == robust:
        return text + "."
    via = sum(c["delta_classes"] for c in checks.values())
    if nets:
        text += f", {sum(c['carried'] for c in nets.values())} of {sum(c['robust'] for c in nets.values())} on NET-1"
    text += ", where bounds re-derived without a solver leave each margin further below 0 than the bound"
    text += f" ({via} classes through the verdict's delta instead)" if via else ""
    return text + (f". On the other robust images some margin is not proven below minus the rounding bound, which "
                   f"exceeds delta there by a median {min(medians):.0f} to {max(medians):.0f} times per study: those "
                   f"verdicts are about f, the exact function of the float32 weights.")


#: the l_2 study's verdicts at its first time limit (seconds), kept when the limit was raised
L2_EARLIER, L2_EARLIER_LIMIT = "l2-decisions-at-30s.csv", 30.0


def l2_sentence(results: dict, scale: str, root: Path | None = None) -> str:
    """How much of each l_2 study is decided; against the verdicts kept from a shorter limit (:data:`L2_EARLIER`),
    what the longer limit decided; and, below ``DECIDED_SHARE``, what the undecided images look like (their
    unstable ReLUs and the classes still open at the time limit), from the stored rows."""
    path = study_dir(scale, root) / L2_EARLIER
    earlier = store.load(path) if path.exists() else None
    parts = []
    for name, (st, t) in results.items():
        if st.norm != "l2":
            continue
        mine = set(t["index"].astype(int))
        rows = [r for r in load_exact_rows(st, scale, root) if r["index"] in mine]
        undecided = [r for r in rows if r["status"] == "unknown"]
        share = 1 - len(undecided) / len(rows)
        text = (f"The l_2 study {name} decides {len(rows) - len(undecided)} of its {len(rows)} images ({share:.0%}) "
                f"within {st.time_limit:g} s each")
        old = earlier[earlier["study"] == name].set_index("index")["status"] if earlier is not None else None
        if old is not None and len(old) and st.time_limit != L2_EARLIER_LIMIT:
            now = pd.Series({r["index"]: r["status"] for r in rows})
            common = old.index.intersection(now.index)
            was_open = old[common] == "unknown"
            flipped = int(((old[common] != now[common]) & ~was_open & (now[common] != "unknown")).sum())
            text += (f"; at {L2_EARLIER_LIMIT:g} s it decided {int((~was_open).sum())}, and the longer limit decided "
                     f"{int((was_open & (now[common] != 'unknown')).sum())} of the {int(was_open.sum())} images left "
                     f"open then ({verdict_changes(old, now)['which']}), with "
                     + (f"{flipped} decided verdicts reversed" if flipped else "no decided verdict reversed"))
        if share < DECIDED_SHARE and undecided:
            solved = [r for r in rows if r["status"] != "unknown" and r["by"] != "attack"]
            by_bounds = [(r.get("ruled_out") or {}).get("bounds", 0) + (r.get("ruled_out") or {}).get("lp-dual", 0)
                         for r in undecided]
            text += (f". That is short of {DECIDED_SHARE:.0%}. On the undecided images, bounds and LP duals rule out "
                     f"a median of {np.median(by_bounds):.0f} of 9 wrong classes; SCIP, with the ball as a convex "
                     f"quadratic constraint, takes the others one at a time and stops at the first it cannot close")
            seen = [r["open_class"] for r in undecided if r.get("open_class") and "bound" in r["open_class"]]
            first = [o for o in seen if o["tried"] == 1]  # SCIP had all the time that bounds and LPs left
            if first:
                bounds = [o["bound"] for o in first]
                text += (f": on {len(first)} of {len(seen)} images that is the first class it tries, with all the "
                         f"time left, and when it stops its bound on f_c - f_y is still above 0 on "
                         f"{sum(b > 0 for b in bounds)} of them (median {np.median(bounds):+.2f}; robust needs "
                         f"-delta), after a median of {np.median([o['nodes'] for o in first]):.0f} "
                         f"branch-and-bound nodes")
            text += (f". The undecided images keep a median of {np.median([r['unstable'] for r in undecided]):.0f} "
                     f"unstable ReLUs (the solved ones {np.median([r['unstable'] for r in solved] or [0]):.0f}). "
                     f"For l_2 the chapter therefore reports bounds on R")
        parts.append(text + ".")
    return " ".join(parts)


def error_table(results: dict) -> pd.DataFrame:
    """Table 7.2: E = R - R'' (pp) of every attack in every study, as 'E (95% interval)', or 'low to high
    (interval)' where some images are unknown."""
    cols = {}
    for name, (st, t) in results.items():
        g = gap_table(t, st.norm).set_index("attack")
        cols[name] = {a: f"{e_text(r)} ({100 * r['E_ci_low']:.1f}-{100 * r['E_ci_high']:.1f})" for a, r in g.iterrows()}
    return pd.DataFrame(cols).fillna("not run").rename_axis("attack").reset_index()


def conclusions(results: dict) -> str:
    """The chapter's closing paragraph, computed from its numbers (Markdown)."""
    if not results:
        return "No study is available at this scale, so this chapter draws no conclusion."
    parts = []
    for name, (st, t) in results.items():
        g = gap_table(t, st.norm).set_index("attack")
        s = exact_summary(t)
        r = f"R = {s['R_low']:.3f}" if s["unknown"] == 0 else f"R in [{s['R_low']:.3f}, {s['R_high']:.3f}]"
        line = f"* **{name}** ({s['images']} images): {r}; {best_attack_text(g)}"
        if "FGSM" in g.index and not all_attacks_tie(g):
            line += f"; FGSM (ATRAS's evaluation) misses {e_text(g.loc['FGSM'])} pp"
        tight = tighter_than_ce(t)
        if tight is not None:
            pg = tight["gain"]
            line += (f"; at PGD-10 the searched loss closes {pg.gain_pp:+.1f} pp [{pg.ci_low:+.1f}, {pg.ci_high:+.1f}] "
                     f"of CE's gap (McNemar p = {pg.p_value:.2g})")
        n_only = len(only_exact(t, st.norm))
        line += f"; {n_only} image{'s' if n_only != 1 else ''} only the solver found."
        parts.append(line)
    return "\n".join(parts)


def takeaway(results: dict) -> str:
    """Chapter 07's answer in two sentences, computed from its studies: the range of the best single
    attack's E (images proven vulnerable that it missed), of FGSM's, and of what the searched loss closes of
    CE's gap at PGD-10; and, for the studies with more than 5% unknown images, how large E could be."""
    if not results:
        return "No study is available at this scale."
    best, fgsm, closed, unsure = [], [], [], []
    for name, (st, t) in results.items():
        g = gap_table(t, st.norm).set_index("attack")
        best.append(100 * g.drop(index="any attack")["E_low"].min())
        if "FGSM" in g.index:
            fgsm.append(100 * g.loc["FGSM", "E_low"])
        if (t["status"] == "unknown").mean() > 0.05:
            unsure.append(f"{name} (up to {100 * g.drop(index='any attack')['E_high'].min():.1f} pp)")
        if "PGD-10 searched" in g.index:
            closed.append(100 * (g.loc["PGD-10 ce", "E_low"] - g.loc["PGD-10 searched", "E_low"]))
    span = lambda v, sign="": f"{min(v):{sign}.1f} to {max(v):{sign}.1f} pp" if min(v) != max(v) else f"{v[0]:{sign}.1f} pp"
    text = (f"Over {len(results)} verified studies, the best single attack misses {span(best)} of the exact risk "
            f"(images proven vulnerable that it did not break)")
    text += f"; FGSM, ATRAS's only attack, misses {span(fgsm)}" if fgsm else ""
    text += f"; at PGD-10 the searched loss closes {span(closed, '+')} of CE's gap" if closed else ""
    text += (f". Where more than 5% of a study's images are unknown, E is known only up to a bound, larger than "
             f"these lower ends: {', '.join(unsure)}") if unsure else ""
    return text + ". Table 7.2 gives each attack's E with its interval."


def unfound(results: dict, scale: str, root: Path | None = None, max_shown: int = 6) -> dict:
    """Figure 7.2's data: images no attack broke, with the solver's counterexamples (arguments of
    :func:`lossbook.publish.plots.unfound_examples`)."""
    out = {"images": [], "counterexamples": [], "labels": [], "predictions": [], "titles": []}
    for name, (st, t) in results.items():
        spec = MODELS[st.model]
        rows = {r["index"]: r for r in load_exact_rows(st, scale, root)}
        x, _ = data.load(spec.dataset, "test")
        for i in only_exact(t, st.norm)["index"]:
            r = rows[int(i)]
            if len(out["images"]) >= max_shown or r.get("witness") is None:
                continue
            out["images"].append(x[int(i)].numpy())
            out["counterexamples"].append(certify.decode_point(r["witness"]).astype(np.float32).reshape(x.shape[1:]))
            name_of = (lambda c: data.CIFAR10_CLASSES[c]) if spec.dataset == "cifar10" else str
            out["labels"].append(name_of(r["label"]))
            out["predictions"].append(name_of(r["predicted"]))
            out["titles"].append(f"{name}, test image {int(i)}")
    return out


def fgsm_gap_sentence(scale: str = "cpu") -> str:
    """One sentence for chapter 06: FGSM's E on the ATRAS MLPs verified at ATRAS's eps (saved studies
    only; empty when none is saved)."""
    chosen = [st for st in studies(scale) if MODELS[st.model].training == "fgsm" and st.norm == "linf"]
    results, _ = chapter_studies(chosen, scale, compute=False)
    parts = []
    for st, table in results.values():
        spec = MODELS[st.model]
        e = e_text(gap_table(table, st.norm).set_index("attack").loc["FGSM"])
        parts.append(f"{spec.dataset} {list(spec.hidden)} at eps {st.eps:.3g}: {e} pp")
    if not parts:
        return ""
    return ("FGSM, the paper's only attack, underestimates the exact risk of the FGSM-AT MLPs verified in chapter 7 "
            f"({'; '.join(parts)}): the accuracies under attack above are upper bounds on the robust accuracy.")


#: chapter 07's parameters (papermill, ``run -p``; checked before its kernel starts)
PARAMETERS: dict[str, Param] = {  # no seed: the exact risk has none, and the attacks' starts are part of each study
    **{k: v for k, v in common("smoke | cpu (committed results) | paper (= cpu: the verified models are tiny)").items()
       if k != "seed"},
    "studies": Param("all", lambda v: None if isinstance(v, str) and v.strip() else
                     "'all' or comma-separated study names (lossbook.chapters.exact_risk.STUDIES)"),
    "n_images": Param(0, whole(), "images per study; 0: the study's own number"),
    "time_limit": Param(0.0, number(0, zero_means_default=True), "solver seconds per image"),
}


def check_parameters(v: dict) -> None:
    """Named studies must exist at the chosen scale."""
    if v["studies"] != "all":
        with_name("studies", v["studies"], lambda: select_studies(v["studies"], v["scale"]))


# ------------------------------------------------------------------------------------------------
# The glance page's rows (lossbook.publish.glance)
# ------------------------------------------------------------------------------------------------
#: the label of chapter 07's section on what exact risk says about the two papers, where the glance page's rows link
GLANCE_TARGET = "exact-tighter"


def tighter_than_ce(t: pd.DataFrame) -> dict | None:
    """Whether the searched loss makes PGD-10 tighter than CE on a study's verified images: the paired gain
    (= the share of CE's gap it closes; the protocol's exact interval and McNemar p), the vulnerable images
    CE misses (and at most, counting the undecided ones it does not break), and whether that leaves no
    room (fewer than ``NO_ROOM_IMAGES`` even at most). None where the study ran no PGD-10 searched and CE."""
    if not {"PGD-10 searched", "PGD-10 ce"} <= set(t.columns):
        return None
    missed = ~t["PGD-10 ce"].astype(bool)
    ce_missed = int(((t["status"] == "vulnerable") & missed).sum())
    # undecided images CE did not break may be vulnerable too: "no room" only if it holds for all of them
    ce_missed_at_most = ce_missed + int(((t["status"] == "unknown") & missed).sum())
    return {"gain": exact_gain(t["PGD-10 searched"].to_numpy(bool), t["PGD-10 ce"].to_numpy(bool)),
            "ce_missed": ce_missed, "ce_missed_at_most": ce_missed_at_most,
            "no_room": ce_missed_at_most < NO_ROOM_IMAGES}


def glance_rows(scale: str) -> list[dict]:
    """The glance page's rows: per verified study, whether the searched loss makes PGD-10 tighter than CE."""
    rows = []
    nets = [(st, t) for _, st, t in paper_net_results(scale).values() if t is not None]
    for st, t in [(st, load_study(st, scale)) for st in studies(scale)] + nets:
        if t is None:
            continue
        tight = tighter_than_ce(t)
        if tight is not None:
            pg, ce_missed = tight["gain"], tight["ce_missed"]
            at_most = "" if tight["ce_missed_at_most"] == ce_missed else f", at most {tight['ce_missed_at_most']}"
            rows.append({"paper": "AutoLoss-AR", "claim": f"a searched loss makes PGD-10 a tighter estimate of R than CE "
                         f"({st.name()}, on verified images)", "the paper's number": "+0.7 to +2.9 pp (its CNNs, R unknown)",
                         "ours": f"{pg.gain_pp:+.1f} pp [{pg.ci_low:+.1f}, {pg.ci_high:+.1f}] (McNemar p = "
                         f"{pg.p_value:.2g}; {len(t)} verified images; CE misses {ce_missed} vulnerable "
                         f"image{'s' * (ce_missed != 1)}{at_most})",
                         "scale": scale, "verdict": NO_ROOM if tight["no_room"] else direction(pg)})
    return [{**row, "target": GLANCE_TARGET} for row in rows]


#: a study whose CE error is below this many images leaves PGD nothing to tighten: reported, not judged
NO_ROOM_IMAGES = 2
NO_ROOM = "no room to improve"
