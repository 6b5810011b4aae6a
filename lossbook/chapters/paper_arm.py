"""Question 1 by the protocol of ``book/protocol_q1.md``: the paper arm, judged on held-out images.

``python -m lossbook paper-arm --datasets mnist`` runs, setting by setting, the unseeded GP runs of
the arm (random trees only, as in the paper; the ``paper-arm`` preset), selects the best run on the
search images, re-evaluates its loss and CE, C&W and DLR on 1,000 held-out images under PGD-10 and
PGD-100, and writes one row per setting to ``results/search/paper-arm/summary.csv``. Then the
sensitivity arm of one seeded run per setting. Everything resumes: finished runs are loaded, an
interrupted run continues from its checkpoint, a run of the grid made for the very same request
(setting, eps, GP configuration, models, seed) counts without being copied.

The arm's eps follows the paper's stated rule on the model attacked: Table III's eps where CE-PGD-10
breaks 65-75% of the calibration images, else the eps where it breaks 70% (:func:`arm_setting`).
"""
from __future__ import annotations

import ast
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from lossbook import store
from lossbook.chapters.gp_search import PLANS as GRID_PLANS
from lossbook.chapters.gp_search import SEEDED, GridPlan, heldout_outcomes, paper_gain
from lossbook.config import RESULTS_DIR, SETTINGS, check_choice, train_config
from lossbook.core.attacks import evaluate_losses, pgd
from lossbook.core.losses import HANDCRAFTED, RELEASED_FORMULAS, compile_formula, per_sample, released_loss
from lossbook.core.stats import (
    DESCRIPTIVE,
    NOT_RUN,
    agresti_min_interval,
    direction,
    exact_gain,
    holm,
    pooled_gain,
    power_of_direction,
    size_verdict,
)
from lossbook.core.train import ensure_trained
from lossbook.search.runs import run_request, search_dir, search_setting
from lossbook.search.settings import SEARCH_PRESETS, Setting, auto_setting, parse_setting, setting_images

#: the protocol's band: Table III's eps is kept where CE-PGD-10's R'' lies in it
KEEP_BAND = (0.65, 0.75)
#: how a row says which eps it used
KEPT_RULE, CALIBRATED_RULE = "Table III (CE R'' in band)", "calibrated to CE R'' = 0.70"


@dataclass(frozen=True)
class ArmPlan:
    """What an arm runs: its GP preset (runs under ``results/search/<preset>/``), models, seeds, images."""

    name: str
    preset: str
    model_scale: tuple  # ((dataset, scale), ...)
    seeds: tuple  # ((dataset, (unseeded run seeds...)), ...)
    calibration_images: tuple  # ((dataset, n), ...): images of the stored eps calibration
    reuse: tuple = ("grid",)  # presets whose runs count where they answer the same request
    seeded_seed: int | None = 2  # the labelled seeded run (a sensitivity arm, never pooled); None: no seeded run
    heldout_images: int = 1000
    heldout_steps: tuple = (10, 100)
    heldout_seed: int = 1000
    band: tuple = KEEP_BAND

    def scale_of(self, dataset: str) -> str:
        return dict(self.model_scale)[dataset]

    def seeds_of(self, dataset: str) -> tuple:
        return tuple(dict(self.seeds)[dataset])

    def heldout_plan(self, dataset: str) -> GridPlan:
        """The held-out check of :mod:`lossbook.chapters.gp_search` with this arm's images, steps and folder."""
        return GridPlan(self.scale_of(dataset), self.preset, len(self.seeds_of(dataset)), 0, self.heldout_images,
                        self.heldout_steps, self.heldout_seed)


ARMS = {
    "paper": ArmPlan("paper", "paper-arm", (("mnist", "paper"), ("cifar10", "cpu")),
                     (("mnist", (0, 1, 3, 4, 5)), ("cifar10", (0, 1, 3))), (("mnist", 1000), ("cifar10", 400))),
    "smoke": ArmPlan("smoke", "smoke-arm", (("mnist", "smoke"), ("cifar10", "smoke")),
                     (("mnist", (0, 1)), ("cifar10", (0, 1))), (("mnist", 32), ("cifar10", 32)), reuse=(),
                     heldout_images=32, heldout_steps=(10, 20)),
    # sensitivity to training length: the paper arm's protocol on the 30-epoch CIFAR-10 AT models
    "long-at": ArmPlan("long-at", "long-at-arm", (("cifar10", "cpu-long"),), (("cifar10", (0, 1, 3)),),
                       (("cifar10", 400),), reuse=(), seeded_seed=None),
    # the released code's search choices (lexicase selection, 25 nodes) on MNIST's 160-epoch models, one run each
    "lexicase": ArmPlan("lexicase", "lexicase-arm", (("mnist", "paper"),), (("mnist", (0,)),), (("mnist", 1000),),
                        reuse=(), seeded_seed=None),
}
#: the settings an arm judges (all 24 unless named here)
ARM_SETTINGS = {"long-at": tuple(s for s in SETTINGS if s.startswith("cifar10-") and "-at-" in s),
                "lexicase": tuple(s for s in SETTINGS if s.startswith("mnist-"))}


def arm_settings(arm: str) -> tuple:
    """The settings of ``arm``, in the grid's order."""
    check_choice("arm", arm, ARMS)
    return ARM_SETTINGS.get(arm, SETTINGS)


def arm_setting(name: str, plan: ArmPlan, root: Path | None = None) -> Setting:
    """The setting with its eps by the protocol's rule on the arm's model."""
    d, n, t, norm = parse_setting(name)
    return auto_setting(d, n, t, norm, plan.scale_of(d), n_images=dict(plan.calibration_images)[d],
                        band=plan.band, root=root)


def eps_origin(name: str, plan: ArmPlan, root: Path | None = None) -> dict:
    """Table III's eps, the R'' CE-PGD-10 reaches there, and whether the arm kept it (read back, no compute)."""
    d = name.split("-")[0]
    path = (root or RESULTS_DIR / "search") / plan.scale_of(d) / "calibration.json"
    entry = store.load(path, {"what": "eps calibration", "scale": plan.scale_of(d)})[f"{name}@table-iii"]
    kept = plan.band[0] <= entry["ce_risk"] <= plan.band[1]
    return {"table_iii_eps": entry["eps"], "table_iii_ce_risk": entry["ce_risk"],
            "eps_rule": KEPT_RULE if kept else CALIBRATED_RULE}


def _config(plan: ArmPlan, seeded: bool = False):
    return replace(SEARCH_PRESETS[plan.preset], seed_losses=SEEDED if seeded else ())


def find_run(setting: Setting, plan: ArmPlan, seed: int, seeded: bool = False, root: Path | None = None) -> dict | None:
    """A finished run answering this request, in the arm's folder or one of ``plan.reuse``; None if none."""
    cfg = _config(plan, seeded)
    request = run_request(setting, cfg, plan.scale_of(setting.dataset), seed)
    for preset in (plan.preset, *plan.reuse):
        path = search_dir(setting, preset, root) / f"run-{seed}.json"
        if store.matches(path, request):
            return {**store.load(path, request), "found_in": preset}
    return None


def _ensure_smoke_model(name: str, plan: ArmPlan, progress: bool) -> None:
    """Smoke models cost seconds: trained where missing (other scales are trained by ``train``)."""
    d, n, t, _ = parse_setting(name)
    if plan.scale_of(d) == "smoke":
        ensure_trained([d], [n], [t], "smoke", progress=progress)


def arm_runs(name: str, plan: ArmPlan, root: Path | None = None, compute: bool = True, progress: bool = True,
             log=print, seeded: bool = False) -> list[dict]:
    """The setting's unseeded runs (or its one seeded run): found ones loaded, missing ones searched
    (``compute``) and saved in the arm's folder."""
    if compute:
        _ensure_smoke_model(name, plan, progress)
    setting = arm_setting(name, plan, root)
    scale = plan.scale_of(setting.dataset)
    out = []
    for seed in ((plan.seeded_seed,) if seeded else plan.seeds_of(setting.dataset)):
        rec = find_run(setting, plan, seed, seeded, root)
        if rec is None and compute:
            t0 = time.perf_counter()
            rec = search_setting(setting, plan.preset, runs=1, seed=seed, model_scale=scale, root=root,
                                 cfg=_config(plan, seeded), progress=progress)[0]
            rec = {**rec, "found_in": plan.preset}
            log(f"{name} run seed {seed}{' (seeded)' * seeded}: R''={rec['best_fitness']:.3f}, gain over CE "
                f"{rec['gain_over_ce_pp']:+.1f} pp, {time.perf_counter() - t0:.0f} s: {rec['best_pretty']}")
        if rec is not None:
            out.append(rec)
    return out


def best_run(runs: list[dict]) -> dict:
    """The run selected on the search images: highest best fitness, ties to the lowest seed."""
    return max(sorted(runs, key=lambda r: r["seed"]), key=lambda r: r["best_fitness"])


def uses_label(formula: str, rows: int = 8, classes: int = 10) -> bool:
    """Whether a loss's gradient with respect to the logits depends on the label ``q`` (PGD follows that
    gradient): a loss whose ``q`` enters only as a constant, or not at all, climbs the same way whatever
    the label and can only win by early stopping. Tested on random logits with two different labels."""
    if not any(isinstance(n, ast.Name) and n.id == "q" for n in ast.walk(ast.parse(formula, mode="eval"))):
        return False
    loss = compile_formula(formula)
    p = torch.randn(rows, classes, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def grad(labels: torch.Tensor) -> torch.Tensor:
        x = p.clone().requires_grad_(True)
        q = torch.nn.functional.one_hot(labels, classes).to(x.dtype)
        return torch.autograd.grad(per_sample(loss(x, q), rows).sum(), x, allow_unused=True)[0]

    first, second = (grad((torch.arange(rows) + k) % classes) for k in (0, 1))
    if first is None or second is None:  # no gradient at all: nothing to follow, label or not
        return False
    return not torch.allclose(first, second, rtol=1e-6, atol=1e-9)


def _model_facts(dataset: str, net: str, training: str, scale: str) -> dict:
    acc_path = RESULTS_DIR / "models" / scale / "accuracies.csv"
    acc = None
    if acc_path.exists():
        table = store.load(acc_path)
        seed0 = table.seed == 0 if "seed" in table else True
        hit = table[(table.dataset == dataset) & (table.net == net) & (table.training == training) & seed0]
        acc = float(hit.test_acc.iloc[0]) if len(hit) else None
    return {"model_scale": scale, "model_epochs": train_config(dataset, net, training, scale).epochs,
            "model_clean_acc": acc}


def summary_row(name: str, plan: ArmPlan, runs: list[dict], held: dict, root: Path | None = None) -> dict:
    """One row of the arm's summary: model, eps and its origin, runs, in-sample and held-out gains with
    the protocol's interval, p-value and verdicts (direction, size) under each held-out PGD."""
    setting = arm_setting(name, plan, root)
    best = best_run(runs)
    paper = paper_gain(name)
    row = {"setting": name, **_model_facts(setting.dataset, setting.net, setting.training, plan.scale_of(setting.dataset)),
           "eps": setting.eps, **eps_origin(name, plan, root), "runs": len(runs),
           "run_seeds": " ".join(str(r["seed"]) for r in sorted(runs, key=lambda r: r["seed"])),
           "runs_from_grid": sum(r["found_in"] != plan.preset for r in runs),
           "runs_beating_ce": sum(r["best_fitness"] > r["baselines"]["ce"] for r in runs),
           "paper_gain_pp": paper, "insample_gain_pp": round(best["gain_over_ce_pp"], 2)}
    for steps in plan.heldout_steps:
        b = held["broken"][steps]
        g = exact_gain(b[0], b[1])
        sfx = "" if steps == plan.heldout_steps[0] else f"_pgd{steps}"
        best_hand = max(range(2, 4), key=lambda k: b[k].mean())
        row.update({f"ce_risk{sfx}": round(float(b[1].mean()), 4), f"searched_risk{sfx}": round(float(b[0].mean()), 4),
                    f"heldout_gain_pp{sfx}": round(g.gain_pp, 2), f"ci_low{sfx}": round(g.ci_low, 2),
                    f"ci_high{sfx}": round(g.ci_high, 2), f"only_searched{sfx}": g.only_a, f"only_ce{sfx}": g.only_b,
                    f"p_value{sfx}": float(f"{g.p_value:.4g}"), f"direction{sfx}": direction(g),
                    f"size{sfx}": size_verdict(g, paper),
                    f"gain_over_best_of_cw_dlr_pp{sfx}": round(100 * float(b[0].mean() - b[best_hand].mean()), 2)})
    row.update({"heldout_images": plan.heldout_images, "best_run_seed": best["seed"], "best_formula": best["best"],
                "best_pretty": best["best_pretty"], "uses_label": uses_label(best["best"])})
    return row


def summary_request(plan: ArmPlan) -> dict:
    return {"what": "paper-arm summary", **asdict(plan)}


def summary_path(plan: ArmPlan, root: Path | None = None) -> Path:
    return (root or RESULTS_DIR / "search") / plan.preset / "summary.csv"


def write_summary(rows: list[dict], plan: ArmPlan, root: Path | None = None) -> Path:
    """Add ``rows`` to the arm's summary (a setting's new row replaces its old one; rows of other processes kept)."""
    def merged(current):
        by = {r["setting"]: r for r in (current.to_dict("records") if current is not None else [])}
        by.update({r["setting"]: r for r in rows})
        return pd.DataFrame(sorted(by.values(), key=lambda r: SETTINGS.index(r["setting"])))

    return store.update(summary_path(plan, root), summary_request(plan), merged)


def load_summary(plan: ArmPlan | str = "paper", root: Path | None = None) -> pd.DataFrame | None:
    """The arm's summary (validated), or None where no setting is judged yet."""
    plan = ARMS[plan] if isinstance(plan, str) else plan
    path = summary_path(plan, root)
    if not path.exists():
        return None
    # the family Holm's correction runs over (every setting the arm plans, judged or not), and the search's images
    return store.load(path, summary_request(plan)).assign(planned_settings=len(arm_settings(plan.name)),
                                                          search_images=SEARCH_PRESETS[plan.preset].n_images)


def judge_setting(name: str, plan: ArmPlan, root: Path | None = None, compute: bool = True, progress: bool = True,
                  log=print) -> dict | None:
    """Runs, held-out check and summary row of one setting; None while a planned run is missing."""
    if compute:
        _ensure_smoke_model(name, plan, progress)
    setting = arm_setting(name, plan, root)
    runs = arm_runs(name, plan, root, compute, progress, log)
    if len(runs) < len(plan.seeds_of(setting.dataset)):
        return None
    held = heldout_outcomes(setting, plan.heldout_plan(setting.dataset), best_run(runs), root, tag=plan.preset)
    row = summary_row(name, plan, runs, held, root)
    write_summary([row], plan, root)
    return row


def run_arm(arm: str = "paper", settings=None, root: Path | None = None, progress: bool = True, log=print,
            seeded: bool = True) -> Path:
    """Judge every setting asked (default: all 24, MNIST first), then (``seeded``) run each one's seeded run."""
    plan = ARMS[arm]
    settings = list(settings or arm_settings(arm))
    for s in settings:
        check_choice(f"setting of arm {arm}", s, arm_settings(arm))
    t0 = time.perf_counter()
    for i, name in enumerate(settings):
        row = judge_setting(name, plan, root, True, progress, log)
        log(f"[{i + 1}/{len(settings)}] {name} eps={row['eps']}: held-out gain over CE {row['heldout_gain_pp']:+.1f} pp "
            f"[{row['ci_low']:+.1f}, {row['ci_high']:+.1f}] (paper {row['paper_gain_pp']:+.1f}; in-sample "
            f"{row['insample_gain_pp']:+.1f}): {row['direction']}, {row['size']}; "
            f"{time.perf_counter() - t0:.0f} s so far")
    if seeded and plan.seeded_seed is not None:
        for name in settings:
            arm_runs(name, plan, root, True, progress, log, seeded=True)
        write_sensitivity(plan, settings, root, log)
    return summary_path(plan, root)


# ------------------------------------------------------------------------------------------------
# The family: Holm over the settings judged, and the pooled gain
# ------------------------------------------------------------------------------------------------
def second_attack(summary: pd.DataFrame) -> str:
    """The column suffix of the summary's second held-out attack (``_pgd100`` in the paper arm)."""
    return next(c[len("heldout_gain_pp"):] for c in summary.columns if c.startswith("heldout_gain_pp_pgd"))


def with_holm(summary: pd.DataFrame) -> pd.DataFrame:
    """The summary with Holm-adjusted p-values under each held-out attack, over the arm's planned family
    (``planned_settings``, set by :func:`load_summary`; else its rows): settings not judged yet count as the
    largest p-values, so a partial arm's adjustment is never smaller than the complete arm's could be."""
    out = summary.copy()
    family_size = int(summary["planned_settings"].iloc[0]) if "planned_settings" in summary and len(summary) \
        else len(summary)
    for sfx in ("", second_attack(summary)):
        out[f"holm_p{sfx}"] = holm(out[f"p_value{sfx}"].to_numpy(), family_size)
    return out


def pooled(summary: pd.DataFrame, sfx: str = "", resample_settings: bool = True) -> tuple[float, float, float]:
    """Mean held-out gain over the judged settings with the protocol's two-stage bootstrap interval (or, without
    ``resample_settings``, the interval about these very settings: images resampled only)."""
    pairs = summary[[f"only_searched{sfx}", f"only_ce{sfx}", "heldout_images"]].to_numpy()
    return pooled_gain(pairs, resample_settings=resample_settings)


def family(summary: pd.DataFrame, sfx: str = "") -> dict:
    """Counts for H3: settings with a gain / a loss that survive Holm at 0.05, and the direction counts."""
    s = with_holm(summary)
    sig = s[f"holm_p{sfx}"] < 0.05
    counts = s[f"direction{sfx}"].value_counts()
    return {"judged": len(s), "gain_after_holm": int((sig & (s[f"heldout_gain_pp{sfx}"] > 0)).sum()),
            "loss_after_holm": int((sig & (s[f"heldout_gain_pp{sfx}"] < 0)).sum()),
            **{v: int(counts.get(v, 0)) for v in ("reproduced", "not reproduced", "inconclusive")}}


def success_rate(summary: pd.DataFrame) -> dict:
    """The paper's "100% success rate", per setting as the paper states it: the judged settings in which
    every unseeded run beat CE on its own search images, and the runs that did (in-sample, descriptive)."""
    every = summary["runs_beating_ce"].astype(int) == summary["runs"].astype(int)
    return {"settings_all_beat": int(every.sum()), "judged": len(summary),
            "runs_beat": int(summary["runs_beating_ce"].sum()), "runs": int(summary["runs"].sum())}


def success_sentence(summary: pd.DataFrame) -> str:
    """The paper's 100% read per run and per setting (in-sample, on the search images)."""
    r = success_rate(summary)
    some = int((summary["runs_beating_ce"].astype(int) > 0).sum())
    best = int((summary["insample_gain_pp"] > 0).sum())
    return (f"per run: {r['runs_beat']} of {r['runs']} unseeded runs beat CE on their search images; per setting: "
            f"the selected run does in {best} of {r['judged']}, some run in {some}, every run in "
            f"{r['settings_all_beat']} (in-sample, descriptive)")


#: how the glance page words the size verdict (where the paper's gain lies relative to our interval)
SIZE_WORDS = {"consistent": "the paper's gain inside our interval",
              "smaller than the paper's": "ours smaller than the paper's",
              "larger than the paper's": "ours larger than the paper's"}


def answer(summary: pd.DataFrame | None, sens: pd.DataFrame | None = None) -> str:
    """Question 1 in one paragraph, counted from the arm's summary (and its sensitivity table, where given)."""
    if summary is None or summary.empty:
        return ("No setting of the paper arm has been judged yet (`python -m lossbook paper-arm`); the protocol "
                "is fixed on its own page.")
    f = family(summary)
    mean, lo, hi = pooled(summary)
    _, fixed_lo, fixed_hi = pooled(summary, resample_settings=False)
    rest = "" if f["judged"] == len(SETTINGS) else f"; {len(SETTINGS) - f['judged']} not judged yet"
    return (f"In the paper arm ({f['judged']} of {len(SETTINGS)} settings judged{rest}), the best searched loss "
            f"beats CE on held-out images under PGD-10 in {f['reproduced']} settings, loses in "
            f"{f['not reproduced']}, and is inconclusive in {f['inconclusive']}; after Holm's correction "
            f"{f['gain_after_holm']} gains and {f['loss_after_holm']} losses remain. The mean held-out gain over "
            f"the judged settings is {mean:+.2f} pp [95%, resampling settings and images: {lo:+.2f}, {hi:+.2f}; "
            f"with these settings fixed: {fixed_lo:+.2f}, {fixed_hi:+.2f}] "
            f"(by group: {group_means(summary)}). "
            f"In-sample, on the search images where the paper reports its gains, the mean is "
            f"{summary.insample_gain_pp.mean():+.2f} pp against the paper's {summary.paper_gain_pp.mean():+.2f} pp for "
            f"the same settings ({insample_by_dataset(summary)}). The paper's 100% success rate, read "
            f"{success_sentence(summary)}." + where_the_evidence_sits(summary, load_summary("long-at"))
            + fresh_block_sentence(summary, sens) + textbook_sentence(summary, sens)
            + shared_starts_sentence(summary, sens))


def insample_by_dataset(summary: pd.DataFrame) -> str:
    """The mean in-sample gain per dataset beside the paper's for the same settings."""
    by = summary.groupby(summary.setting.str.split("-").str[0], sort=False)
    return "; ".join(f"{d}: {g.insample_gain_pp.mean():+.2f} against {g.paper_gain_pp.mean():+.2f}" for d, g in by)


def _percent_range(lo: float, hi: float) -> str:
    return f"{lo:.0%}" if round(100 * lo) == round(100 * hi) else f"{lo:.0%}-{hi:.0%}"


def training_length_sentence(summary: pd.DataFrame, long_at: pd.DataFrame | None) -> str:
    """How the arm's CIFAR-10 AT gains fare on the 30-epoch models: the long-AT arm's directions, and which gains
    that survive Holm in ``summary`` survive Holm over the long-AT arm's own settings too (provisional until it
    has judged every one)."""
    settings = arm_settings("long-at")
    mine = summary[summary.setting.isin(settings)]
    if mine.empty or (mine.model_scale != ARMS["paper"].scale_of("cifar10")).any():
        return ""  # not the paper arm's CIFAR-10 models, against which the long-AT arm is read
    if long_at is None or len(long_at) < len(settings):
        return (f" Training length is checked by the long-AT arm, which judges the CIFAR-10 AT settings again on models "
                f"trained 30 epochs: {_status_words('long-at', long_at)}; until it has judged them, the AT verdicts "
                f"are provisional.")
    s, lng = with_holm(summary), with_holm(long_at).set_index("setting")
    gains = set(s[s.setting.isin(settings) & (s.holm_p < 0.05) & (s.heldout_gain_pp > 0)].setting)
    there = {n for n in lng.index if lng.loc[n, "holm_p"] < 0.05 and lng.loc[n, "heldout_gain_pp"] > 0}
    kept, new = [n for n in settings if n in gains & there], [n for n in settings if n in there - gains]
    f = family(long_at)
    clean = _percent_range(long_at.model_clean_acc.min(), long_at.model_clean_acc.max())
    return (f" On CIFAR-10 AT models trained {int(long_at.model_epochs.iloc[0])} epochs instead of "
            f"{int(mine.model_epochs.iloc[0])} (the long-AT arm; {clean} clean), the "
            f"{len(settings)} AT settings read {f['reproduced']} gains, {f['not reproduced']} losses and "
            f"{f['inconclusive']} inconclusive; {len(kept)} of the {len(gains)} AT gains that survive Holm here survive "
            f"Holm there too ({', '.join(kept) or 'none'})"
            + (f"; only there: {', '.join(new)}" if new else "") + ".")


def where_the_evidence_sits(summary: pd.DataFrame, long_at: pd.DataFrame | None = None) -> str:
    """What the verdicts rest on, counted from the summary: the models of the gains that survive Holm (and what
    the long-AT arm's summary ``long_at`` says of them: :func:`training_length_sentence`), the verdicts without
    the rows searched before the protocol, MNIST's eps against Table III's, and the settings where the search
    barely beat CE on its own images."""
    search_images = int(summary.search_images.iloc[0])  # set by load_summary
    s = with_holm(summary)
    gains = s[(s.holm_p < 0.05) & (s.heldout_gain_pp > 0)]
    out = []
    if len(gains):
        models = ", ".join(f"{n} on {d} {sc} models of {e} epochs ({_percent_range(a_lo, a_hi)} clean)"
                           for (d, sc, e), n, a_lo, a_hi in
                           [(k, len(g), g.model_clean_acc.min(), g.model_clean_acc.max())
                            for k, g in gains.groupby([gains.setting.str.split("-").str[0], gains.model_scale,
                                                       gains.model_epochs], sort=False)])
        out.append(f" The {len(gains)} gains that survive Holm sit {models}."
                   + training_length_sentence(summary, long_at))
    before = made_before_protocol(summary)
    if before.any():
        rest = summary[~before].drop(columns="planned_settings", errors="ignore")
        f = family(rest)
        out.append(f" Without the {int(before.sum())} rows whose selected run was searched before this protocol "
                   f"(Table 3.1), the verdicts are {f['reproduced']} reproduced, {f['not reproduced']} not reproduced "
                   f"and {f['inconclusive']} inconclusive, with {f['gain_after_holm']} gains after Holm over those "
                   f"{f['judged']}.")
    mnist = summary[summary.setting.str.startswith("mnist-")]
    if len(mnist):
        ratio = mnist.eps / mnist.table_iii_eps
        out.append(f" On MNIST the rule's eps is {ratio.min():.2f} to {ratio.max():.2f} times Table III's (Table III's "
                   f"breaks {mnist.table_iii_ce_risk.min():.0%} to {mnist.table_iii_ce_risk.max():.0%} of images "
                   f"with CE on the 160-epoch models); the paper notes that on MNIST \"in some cases, reducing eps "
                   f"leads to a reduction in the improvement of the searched loss\" (Section V, Q2).")
    one = 100 / search_images
    thin = summary[summary.insample_gain_pp <= one + 1e-9]
    if len(thin):
        out.append(f" In {len(thin)} settings ({', '.join(thin.setting)}) the selected run beats CE by at most one of "
                   f"its {search_images} search images (in-sample gain at most {one:.2f} pp): at this budget the "
                   f"search found almost nothing there, so their held-out verdicts test the budget more than the "
                   f"method.")
    return "".join(out)


def shared_starts_sentence(summary: pd.DataFrame, sens: pd.DataFrame | None) -> str:
    """How selection with shared random starts changes the picks and the verdicts (a sensitivity arm)."""
    if sens is None or "shared_direction" not in sens or sens["shared_direction"].isna().all():
        return ""
    done = sens.dropna(subset=["shared_direction"])
    moved = int((done["shared_starts_seed"] != done["best_run_seed"]).sum())
    counts = done["shared_direction"].value_counts()
    return (f" Selected again with one shared set of random starts on the search images, {moved} of {len(done)} "
            f"settings pick another run; the verdicts are then {counts.get('reproduced', 0)} reproduced, "
            f"{counts.get('not reproduced', 0)} not reproduced and {counts.get('inconclusive', 0)} inconclusive.")


def fresh_block_sentence(summary: pd.DataFrame, sens: pd.DataFrame | None) -> str:
    """The verdicts on the fresh held-out block (announced on the protocol page before it was run): counts, the
    gains that survive Holm over the arm's settings, and what becomes of the rows made before the protocol."""
    if sens is None or "fresh_direction" not in sens or sens["fresh_direction"].isna().all():
        return ""
    fresh = sens.dropna(subset=["fresh_direction"]).set_index("setting")
    counts = fresh["fresh_direction"].value_counts()
    family_size = int(summary.planned_settings.iloc[0])  # set by load_summary
    adjusted = holm(fresh["fresh_p_value"].to_numpy(float), max(len(fresh), family_size))
    survive = int(((adjusted < 0.05) & (fresh["fresh_gain_pp"].to_numpy(float) > 0)).sum())
    text = (f" On a fresh block of {int(summary.heldout_images.iloc[0])} images that nothing had used (announced "
            f"before it was run), the verdicts are {counts.get('reproduced', 0)} reproduced, "
            f"{counts.get('not reproduced', 0)} not reproduced and {counts.get('inconclusive', 0)} inconclusive, with "
            f"{survive} gains after Holm")
    early = [n for n, b, d in zip(summary.setting, made_before_protocol(summary), summary.direction)
             if b and d == "reproduced" and n in fresh.index]
    if early:
        kept = sum(fresh.loc[n, "fresh_direction"] == "reproduced" for n in early)
        text += (f"; of the {len(early)} reproduced rows whose run was made before the protocol, {kept} are "
                 f"reproduced there too")
    return text + "."


def textbook_sentence(summary: pd.DataFrame, sens: pd.DataFrame | None) -> str:
    """How many reproduced settings keep their verdict under textbook PGD (constant step, final iterate scored)."""
    if sens is None or "textbook_direction" not in sens:
        return ""
    kept = sens.set_index("setting")["textbook_direction"]
    won = [n for n, d in zip(summary.setting, summary.direction) if d == "reproduced" and n in kept.index]
    if not won:
        return ""
    lost = [n for n in won if kept[n] != "reproduced"]
    return (f" A transfer to another algorithm, which the paper does not claim (its Eq. 8 holds the algorithm "
            f"fixed, and its released PGD scores the first misclassified iterate): under textbook PGD (constant step, "
            f"only the final iterate scored), {len(won) - len(lost)} of the {len(won)} reproduced settings keep their "
            f"verdict"
            + (f"; {', '.join(lost)} do not." if lost else "."))


def all_settings_sentence(summary: pd.DataFrame) -> str:
    """The paper's "all settings" read as one claim (an intersection-union test: it holds only if every
    setting's own test says reproduced, with no correction, since each must hold), and the median power
    of our tests to detect the paper's own gain."""
    f = family(summary)
    power = [power_of_direction(int(a + b), int(n), g) for a, b, n, g in
             zip(summary.only_searched, summary.only_ce, summary.heldout_images, summary.paper_gain_pp)]
    holds = f["reproduced"] == f["judged"] == len(SETTINGS)
    known = [p for p in power if p == p]
    impossible = (f"in {len(power) - len(known)} settings fewer images were discordant than the paper's gain needs, "
                  f"so a gain that large was impossible on these images")
    if known:
        power_text = (f"Conditional on the discordant images we saw, our per-setting test had a median power of "
                      f"{np.median(known):.2f} (from {min(known):.2f} to {max(known):.2f}) to detect a gain as large "
                      f"as the paper's; {impossible}.")
    else:
        power_text = f"No setting had enough discordant images for a power to be computed: {impossible}."
    return (f"An extra reading, not part of the protocol: read as one claim about every setting (an intersection-union "
            f"test: each setting must reproduce on its own), the paper's statement "
            f"{'holds' if holds else 'is not supported'}: {f['reproduced']} of {len(SETTINGS)} settings reproduce. "
            f"{power_text} This power is conditional on the discordant images observed (an observed power: it "
            f"describes these images, not the design). Where it is low, an inconclusive row is weak evidence either "
            f"way. The size verdict is read only beside the direction: a 'consistent' size on an "
            f"inconclusive row says the paper's gain is inside a wide interval, not that it was confirmed.")


def group_means(summary: pd.DataFrame) -> str:
    """The mean held-out gain per dataset and training (the CIFAR-10 AT models are the shortest-trained)."""
    parts = summary.setting.str.split("-")
    groups = summary.groupby([parts.str[0], parts.str[2]], sort=False)["heldout_gain_pp"].mean()
    return ", ".join(f"{d} {t.upper()} {g:+.2f} pp" for (d, t), g in groups.items())




# ------------------------------------------------------------------------------------------------
# Sensitivity arms (beside the verdict, never pooled into it)
# ------------------------------------------------------------------------------------------------
#: textbook PGD: constant step 2.5 * eps / steps, only the final iterate scored
TEXTBOOK = {"schedule": "constant", "step_factor": 2.5, "mode": "final"}


def heldout_images(setting: Setting, plan: ArmPlan, n_search: int):
    """The arm's held-out images of a setting: the model and the ``plan.heldout_images`` correctly
    classified test images after the first ``n_search`` (the search's)."""
    model, x, y, _ = setting_images(setting, plan.scale_of(setting.dataset), plan.heldout_images, skip=n_search)
    return model, x, y


def _sensitivity_outcomes(name: str, plan: ArmPlan, best: dict, root: Path | None) -> dict:
    """Per-image outcomes on the held-out images: the best loss and CE under textbook PGD-10, and the
    authors' released losses under the arm's PGD-10; cached beside the runs for this exact request."""
    setting = arm_setting(name, plan, root)
    steps = plan.heldout_steps[0]
    request = {"setting": asdict(setting), "formula": best["best"], "n_search": best["gp"]["n_images"],
               "n": plan.heldout_images, "steps": steps, "seed": plan.heldout_seed,
               "model_scale": plan.scale_of(setting.dataset), "textbook": TEXTBOOK, "released": RELEASED_FORMULAS}
    path = search_dir(setting, plan.preset, root) / "heldout-sensitivity.npz"

    def compute() -> dict:
        model, x, y = heldout_images(setting, plan, best["gp"]["n_images"])
        textbook = pgd(model, x, y, [compile_formula(best["best"]), HANDCRAFTED["ce"]], norm=setting.norm,
                       eps=setting.eps, steps=steps, schedule=TEXTBOOK["schedule"], mode=TEXTBOOK["mode"],
                       step_size=TEXTBOOK["step_factor"] * setting.eps / steps, seed=plan.heldout_seed, return_x=False)
        released = evaluate_losses(model, x, y, [released_loss(k) for k in RELEASED_FORMULAS], norm=setting.norm,
                                   eps=setting.eps, steps=steps, seed=plan.heldout_seed)
        return {"textbook": textbook.broken.numpy(), "released": released.broken.numpy(),
                "released_invalid": released.invalid.numpy()}

    return store.cached(path, request, compute)


#: the random starts every run's best tree is scored with again on the search images (selection sensitivity)
SHARED_STARTS_SEED = 2000


def shared_starts_selection(name: str, plan: ArmPlan, runs: list[dict], root: Path | None = None) -> dict:
    """Every run's best tree and CE scored again on the search images with one set of random starts (each run
    searched with its own, so CE's R'' there differs from run to run), and the run whose tree then gains most
    over CE (ties to the lowest seed); cached beside the runs for this exact request."""
    setting = arm_setting(name, plan, root)
    ordered = sorted(runs, key=lambda r: r["seed"])
    n_search = ordered[0]["gp"]["n_images"]
    request = {"setting": asdict(setting), "formulas": [r["best"] for r in ordered], "seeds": [r["seed"] for r in ordered],
               "n_search": n_search, "steps": plan.heldout_steps[0], "seed": SHARED_STARTS_SEED,
               "model_scale": plan.scale_of(setting.dataset)}
    path = search_dir(setting, plan.preset, root) / "selection-shared-starts.json"

    def compute() -> dict:
        model, x, y, _ = setting_images(setting, plan.scale_of(setting.dataset), n_search)
        res = evaluate_losses(model, x, y, [compile_formula(r["best"]) for r in ordered] + [HANDCRAFTED["ce"]],
                              norm=setting.norm, eps=setting.eps, steps=plan.heldout_steps[0], seed=SHARED_STARTS_SEED)
        return {"risk": [round(float(v), 5) for v in res.risk], "invalid": [bool(v) for v in res.invalid]}

    scores = store.cached(path, request, compute)
    risks = scores["risk"][:-1]
    pick = max(range(len(ordered)), key=lambda k: (risks[k], -ordered[k]["seed"]))
    return {"run": ordered[pick], "gains_pp": [round(100 * (r - scores["risk"][-1]), 2) for r in risks]}


#: the fresh held-out block (book/protocol_q1.md, announced before it was run): the next ``heldout_images``
#: correctly classified test images after the search's and the held-out block's, with new random starts
FRESH_BLOCK_SEED = 3000


def fresh_block_outcomes(name: str, plan: ArmPlan, best: dict, root: Path | None = None) -> tuple:
    """Per-image outcomes of the selected loss and CE under the arm's PGD-10 on the fresh block; cached beside
    the runs for this exact request. Returns (searched broken, CE broken, the block's test indices)."""
    setting = arm_setting(name, plan, root)
    n_search = best["gp"]["n_images"]
    request = {"setting": asdict(setting), "formula": best["best"], "run_seed": best["seed"],
               "skip": n_search + plan.heldout_images, "n": plan.heldout_images, "steps": plan.heldout_steps[0],
               "seed": FRESH_BLOCK_SEED, "model_scale": plan.scale_of(setting.dataset)}
    path = search_dir(setting, plan.preset, root) / "heldout-fresh-block.json"

    def compute() -> dict:
        model, x, y, idx = setting_images(setting, plan.scale_of(setting.dataset), plan.heldout_images,
                                          skip=request["skip"])
        res = evaluate_losses(model, x, y, [compile_formula(best["best"]), HANDCRAFTED["ce"]], norm=setting.norm,
                              eps=setting.eps, steps=plan.heldout_steps[0], seed=FRESH_BLOCK_SEED)
        broken = res.broken.numpy()
        return {"searched": [int(v) for v in broken[0]], "ce": [int(v) for v in broken[1]],
                "test_indices": [int(i) for i in idx]}

    out = store.cached(path, request, compute)
    return np.array(out["searched"], bool), np.array(out["ce"], bool), out["test_indices"]


def sensitivity_row(name: str, plan: ArmPlan, root: Path | None = None) -> dict | None:
    """The sensitivity columns of a judged setting (None where the setting is not judged); the seeded
    run's columns say "not run at this scale" until that run is done, the others do not wait for it."""
    setting = arm_setting(name, plan, root)
    runs = arm_runs(name, plan, root, compute=False)
    seeded = arm_runs(name, plan, root, compute=False, seeded=True) if plan.seeded_seed is not None else []
    if len(runs) < len(plan.seeds_of(setting.dataset)):
        return None
    hp = plan.heldout_plan(setting.dataset)
    best = best_run(runs)
    held = heldout_outcomes(setting, hp, best, root, tag=plan.preset)
    sens = _sensitivity_outcomes(name, plan, best, root)
    ce = held["broken"][plan.heldout_steps[0]][1]
    row = {"setting": name, "paper_gain_pp": paper_gain(name), "best_run_seed": best["seed"]}
    pairs = {"textbook": sens["textbook"]}
    shared = shared_starts_selection(name, plan, runs, root)
    row["shared_starts_seed"] = shared["run"]["seed"]
    row["shared_starts_gains_pp"] = " ".join(f"{g:+.2f}" for g in shared["gains_pp"])
    row["shared_starts_formula"] = shared["run"]["best_pretty"]
    held_shared = held if shared["run"]["seed"] == best["seed"] else \
        heldout_outcomes(setting, hp, shared["run"], root, tag="shared-starts")
    pairs["shared"] = (held_shared["broken"][plan.heldout_steps[0]][0], held_shared["broken"][plan.heldout_steps[0]][1])
    pairs["fresh"] = fresh_block_outcomes(name, plan, best, root)[:2]
    if seeded:
        held_seeded = heldout_outcomes(setting, hp, seeded[0], root, tag="seeded")
        pairs["seeded"] = (held_seeded["broken"][plan.heldout_steps[0]][0], held_seeded["broken"][plan.heldout_steps[0]][1])
    for label, (a, b) in pairs.items():
        g = exact_gain(a, b)
        row.update({f"{label}_gain_pp": round(g.gain_pp, 2), f"{label}_ci_low": round(g.ci_low, 2),
                    f"{label}_ci_high": round(g.ci_high, 2), f"{label}_p_value": float(f"{g.p_value:.4g}"),
                    f"{label}_direction": direction(g)})
    if not seeded:
        row.update({"seeded_gain_pp": None, "seeded_ci_low": None, "seeded_ci_high": None, "seeded_p_value": None,
                    "seeded_direction": NOT_RUN})
    row["textbook_ce_risk"] = round(float(sens["textbook"][1].mean()), 4)
    row["seeded_formula"] = seeded[0]["best_pretty"] if seeded else None
    released = sens["released"]
    for k, name_k in enumerate(RELEASED_FORMULAS):
        row[f"{name_k}_risk"] = round(float(released[k].mean()), 4) if not sens["released_invalid"][k] else None
    verdicts = [direction(exact_gain(released[k], ce)) for k in range(len(RELEASED_FORMULAS))]
    best_k = max(range(len(RELEASED_FORMULAS)), key=lambda k: released[k].mean())
    row.update({"ce_risk": round(float(ce.mean()), 4), "released_beating_ce": verdicts.count("reproduced"),
                "released_losing_to_ce": verdicts.count("not reproduced"),
                # picked on these very images: descriptive, no interval
                "best_released": list(RELEASED_FORMULAS)[best_k],
                "best_released_gain_pp": round(100 * float(released[best_k].mean() - ce.mean()), 2)})
    return row


def sensitivity_path(plan: ArmPlan, root: Path | None = None) -> Path:
    return (root or RESULTS_DIR / "search") / plan.preset / "sensitivity.csv"


def write_sensitivity(plan: ArmPlan, settings=None, root: Path | None = None, log=print) -> Path | None:
    """The sensitivity table of every setting whose arm and seeded run are done (computing what is missing)."""
    rows = []
    for name in settings or SETTINGS:
        row = sensitivity_row(name, plan, root)
        if row is not None:
            rows.append(row)
            seeded = "not run" if row["seeded_gain_pp"] is None else f"{row['seeded_gain_pp']:+.1f} pp"
            log(f"{name}: textbook PGD {row['textbook_gain_pp']:+.1f} pp ({row['textbook_direction']}), seeded "
                f"{seeded} ({row['seeded_direction']}), released losses beating CE "
                f"{row['released_beating_ce']} of {len(RELEASED_FORMULAS)}")
    if not rows:
        return None
    request = {"what": "paper-arm sensitivity", **asdict(plan), "textbook": TEXTBOOK, "released": RELEASED_FORMULAS}

    def merged(current):
        by = {r["setting"]: r for r in (current.to_dict("records") if current is not None else [])}
        by.update({r["setting"]: r for r in rows})
        return pd.DataFrame(sorted(by.values(), key=lambda r: SETTINGS.index(r["setting"])))

    return store.update(sensitivity_path(plan, root), request, merged)


def load_sensitivity(plan: ArmPlan | str = "paper", root: Path | None = None) -> pd.DataFrame | None:
    """The sensitivity table (validated), or None where nothing is in it yet."""
    plan = ARMS[plan] if isinstance(plan, str) else plan
    path = sensitivity_path(plan, root)
    request = {"what": "paper-arm sensitivity", **asdict(plan), "textbook": TEXTBOOK, "released": RELEASED_FORMULAS}
    return store.load(path, request) if path.exists() else None


# ------------------------------------------------------------------------------------------------
# What chapter 03 shows
# ------------------------------------------------------------------------------------------------
def chapter_arm(scale: str, settings, recompute: bool = False) -> tuple[ArmPlan, pd.DataFrame | None]:
    """The arm chapter 03 leads with: the paper arm's committed summary (cpu and paper scale), or the
    smoke arm, computed for the first of ``settings`` (seconds) where missing or with ``recompute``: at
    smoke scale the chapter shows the machinery, not an answer."""
    plan = ARMS["smoke" if scale == "smoke" else "paper"]
    if scale == "smoke":
        done = load_summary(plan)
        todo = [s for s in list(settings)[:1] if recompute or done is None or s not in set(done.setting)]
        for name in todo:
            judge_setting(name, plan, progress=False, log=lambda *a: None)
            arm_runs(name, plan, progress=False, log=lambda *a: None, seeded=True)
        if todo:
            write_sensitivity(plan, todo, log=lambda *a: None)
    return plan, load_summary(plan)


def _interval(r, sfx: str = "") -> str:
    return f"{r[f'heldout_gain_pp{sfx}']:+.1f} [{r[f'ci_low{sfx}']:+.1f}, {r[f'ci_high{sfx}']:+.1f}]"


def arm_table(summary: pd.DataFrame) -> pd.DataFrame:
    """The protocol's 24-row table as chapter 03 shows it (one row per judged setting)."""
    s, sfx = with_holm(summary), second_attack(summary)
    steps = sfx.removeprefix("_pgd")
    return pd.DataFrame({
        "setting": s.setting,
        "model": [f"{m} ({e} ep., {a:.1%})" if a == a and a is not None else f"{m} ({e} ep.)"
                  for m, e, a in zip(s.model_scale, s.model_epochs, s.model_clean_acc)],
        "eps (Table III: CE R'')": [f"{e:.4g} ({t:.4g}: {r:.2f})" for e, t, r in
                                    zip(s.eps, s.table_iii_eps, s.table_iii_ce_risk)],
        "runs": s.runs, "in-sample gain": s.insample_gain_pp.map("{:+.1f}".format),
        "held-out gain [95%]": [_interval(r) for _, r in s.iterrows()],
        "discordant images": s.only_searched + s.only_ce, "p": s.p_value.map("{:.2g}".format),
        "Holm p": s.holm_p.map("{:.2g}".format), "direction": s.direction,
        "eps / Table III": (s.eps / s.table_iii_eps).map("{:.2f}".format),
        "power at the paper's gain": [_power_text(power_of_direction(int(a + b), int(n), g)) for a, b, n, g in
                                      zip(s.only_searched, s.only_ce, s.heldout_images, s.paper_gain_pp)],
        "paper": s.paper_gain_pp.map("{:+.1f}".format),
        "size": s["size"],
        "size, Agresti-Min": [
            size_verdict(agresti_min_interval(int(a), int(b), int(n)), g) for a, b, n, g in
            zip(s.only_searched, s.only_ce, s.heldout_images, s.paper_gain_pp)],
        f"PGD-{steps} gain [95%]": [_interval(r, sfx) for _, r in s.iterrows()],
        f"PGD-{steps} direction": s[f"direction{sfx}"], "best loss": s.best_pretty,
        "made before this protocol": made_before_protocol(s).map({True: "yes", False: "no"}),
        "label moves the gradient": s.best_formula.map(uses_label).map({True: "yes", False: "no"})})


def training_length_table(summary: pd.DataFrame | None, long_at: pd.DataFrame | None) -> pd.DataFrame:
    """The CIFAR-10 AT settings on the paper arm's models and on the long-AT arm's, side by side: per arm, the
    model (epochs, clean test accuracy, and CE-PGD-10 accuracy at Table III's eps, estimated as clean accuracy
    times 1 - R'' on the calibration's correctly classified images), the arm's eps, and the held-out gain with
    its interval, direction and Holm p over that arm's own family. A setting an arm has not judged reads
    :data:`NOT_RUN`."""
    arms = {"paper arm": summary, "long-AT arm": long_at}
    judged = {k: {} if v is None else with_holm(v).set_index("setting").to_dict("index") for k, v in arms.items()}
    rows = []
    for name in arm_settings("long-at"):
        row = {"setting": name}
        for arm, by in judged.items():
            r = by.get(name)
            if r is None:
                row.update({f"{arm}: model": NOT_RUN, f"{arm}: held-out gain [95%] at eps": ""})
                continue
            pgd = r["model_clean_acc"] * (1 - r["table_iii_ce_risk"])
            row.update({f"{arm}: model": f"{r['model_epochs']} ep.: {r['model_clean_acc']:.1%} clean, {pgd:.1%} "
                                         f"PGD-10 at {r['table_iii_eps']:.4g}",
                        f"{arm}: held-out gain [95%] at eps": f"{_interval(r)} at {r['eps']:.4g}: {r['direction']} "
                                                              f"(Holm p {r['holm_p']:.2g})"})
        rows.append(row)
    return pd.DataFrame(rows)


#: the earlier grid's unseeded runs (searched before book/protocol_q1.md), counted by the arm where eps is unchanged
GRID_UNSEEDED_SEEDS = tuple(seed for seed, seeded in GRID_PLANS["cpu"].seeds if not seeded)


def made_before_protocol(summary: pd.DataFrame) -> pd.Series:
    """Whether a row's selected run is one of the earlier grid's, searched before the protocol page (all False
    for a summary without the columns that say so)."""
    if not {"runs_from_grid", "best_run_seed"} <= set(summary.columns):
        return pd.Series(False, index=summary.index)
    return (summary.runs_from_grid > 0) & summary.best_run_seed.isin(GRID_UNSEEDED_SEEDS)


def _power_text(power: float) -> str:
    return "too few discordant" if power != power else f"{power:.2f}"


def sensitivity_table(sens: pd.DataFrame) -> pd.DataFrame:
    """The sensitivity arms beside each setting: textbook PGD, the seeded run, the authors' released losses."""
    def iv(r, k):
        gain = r.get(f"{k}_gain_pp")
        if gain is None or gain != gain:  # not run yet (absent, None, or NaN read back): the row's reason, if any
            return r[f"{k}_direction"] if isinstance(r.get(f"{k}_direction"), str) else NOT_RUN
        return f"{r[f'{k}_gain_pp']:+.1f} [{r[f'{k}_ci_low']:+.1f}, {r[f'{k}_ci_high']:+.1f}] {r[f'{k}_direction']}"

    def shared(r):
        if "shared_gain_pp" not in r or r["shared_gain_pp"] != r["shared_gain_pp"]:
            return NOT_RUN
        run = "the same run" if r["shared_starts_seed"] == r["best_run_seed"] else f"seed {int(r['shared_starts_seed'])}"
        return f"{run}: {iv(r, 'shared')}"

    return pd.DataFrame({
        "setting": sens.setting,
        "textbook PGD-10: gain over CE": [iv(r, "textbook") for _, r in sens.iterrows()],
        "selected with shared starts: gain over CE": [shared(r) for _, r in sens.iterrows()],
        "seeded run: gain over CE": [iv(r, "seeded") for _, r in sens.iterrows()],
        "fresh block: gain over CE": [iv(r, "fresh") for _, r in sens.iterrows()],
        "CE R''": sens.ce_risk.map("{:.3f}".format),
        "released losses beating / losing to CE": [f"{a} / {b} of {len(RELEASED_FORMULAS)}" for a, b in
                                                   zip(sens.released_beating_ce, sens.released_losing_to_ce)],
        "best released (picked on these images)": [f"{k} {g:+.1f}" for k, g in
                                                   zip(sens.best_released, sens.best_released_gain_pp)]})


def differences_table(plan: ArmPlan, summary: pd.DataFrame | None) -> pd.DataFrame:
    """What differs from the paper, from the plan and the judged rows' records."""
    cfg, paper = SEARCH_PRESETS[plan.preset], SEARCH_PRESETS["paper"]
    trees, paper_trees = cfg.ps * (cfg.gn + 1), paper.ps * (paper.gn + 1)
    rows = [("search budget", f"Table IV: {paper.ps} trees x {paper.gn} generations (images per evaluation not stated; "
             f"{paper.n_images} in the released code)",
             f"{cfg.ps} x {cfg.gn} on {cfg.n_images}: {trees / paper_trees:.1%} of the trees, "
             f"{trees * cfg.n_images / (paper_trees * paper.n_images):.1%} of the image-attacks")]
    for d, seeds in plan.seeds:
        part = summary[summary.setting.str.startswith(d + "-")] if summary is not None else None
        models = ("; ".join(sorted({f"{m} {e} epochs" for m, e in zip(part.model_scale, part.model_epochs)}))
                  if part is not None and len(part) else f"{plan.scale_of(d)} models")
        eps = (f"{(part.eps_rule == CALIBRATED_RULE).sum()} of {len(part)} calibrated"
               if part is not None and len(part) else "by the protocol's rule")
        rows += [(f"models ({d})", "Table II's networks; SGD, learning rate 0.01 dropped at epochs 80 and 120 "
                  "(total not stated; the book's paper scale trains 160)", models),
                 (f"eps ({d})", "Table III, chosen so that R'' is about 0.7",
                  f"Table III where CE-PGD-10's R'' lies in [{plan.band[0]}, {plan.band[1]}], else calibrated to "
                  f"0.70: {eps}"),
                 (f"runs per setting ({d})", "20 independent runs, the best reported (Sec. V-C, Figs. 3-4)",
                  f"{len(seeds)} of 20 unseeded (seeds {', '.join(map(str, seeds))}), each at the budget above")]
    rows += [("attack", "PGD with 10 steps (the text); the released code: cosine step, first misclassified point counts",
              "lossbook's PGD-10 with the same step rule and early stop; start uniform in the ball, last iterate "
              "scored, exact projection, an l_1 attack of its own (the protocol page lists the differences)"),
             ("selection and size limit", "Table IV: tournament of 3, height 25 (the released code: lexicase "
              "selection, 25 nodes, an ensemble)", f"tournament of {cfg.ts}, height {cfg.md}"),
             ("verdict images", "the searched images (no held-out set described)",
              f"{plan.heldout_images} held-out correctly classified test images, new random starts"),
             ("images attacked", "Eq. 4 averages over the data set D",
              "correctly classified test images only (R'' starts at 0), as the authors' released main.py does "
              "(data_filtering)"),
             ("random starts", "not stated", "the same starts for every tree of a run, so a tree's fitness depends on its "
              "formula only")]
    if summary is not None and len(summary):
        c = fitness_counts(plan, list(summary.setting))
        rows.append(("fitness evaluations", "not stated",
                     f"{c['attacked']:,} of {c['asked']:,} trees attacked; {c['formula_hits']:,} repeated formulas and "
                     f"{c['semantic_hits']:,} trees whose logit gradients point as an attacked tree's took its fitness "
                     f"({c['disagreements']} disagreements in {c['spot_checks']:,} spot checks)"))
    rows.append(("the released code's lexicase selection and 25-node limit", "not in the paper's text",
                 "Table IV's tournament and height limit here; " + arm_status("lexicase")))
    return pd.DataFrame(rows, columns=["aspect", "paper", "this arm"])


#: the sensitivity arms that re-run the protocol on other models or with other search choices
OTHER_ARMS = {"long-at": "the CIFAR-10 AT settings on models trained 30 epochs (training-length sensitivity)",
              "lexicase": "MNIST with the released code's lexicase selection and 25-node limit"}


def arm_status(arm: str) -> str:
    """How far an arm has got, in words: its judged settings and their direction counts, or the command."""
    return _status_words(arm, load_summary(arm))


def _status_words(arm: str, summary: pd.DataFrame | None) -> str:
    todo = len(arm_settings(arm))
    if summary is None or summary.empty:
        return f"the {arm} arm is not run yet (`python -m lossbook paper-arm --arm {arm}`)"
    f = family(summary)
    return (f"the {arm} arm has judged {f['judged']} of {todo} settings: {f['reproduced']} gains, "
            f"{f['not reproduced']} losses, {f['inconclusive']} inconclusive")


def fitness_counts(plan: ArmPlan, settings: list) -> dict:
    """How the arm's fitness values were obtained, summed over the unseeded runs of ``settings``: trees
    asked and attacked, formula and behaviour cache hits, spot checks of shared values and disagreements."""
    keys = ("asked", "attacked", "formula_hits", "semantic_hits", "spot_checks", "disagreements")
    out = dict.fromkeys(keys, 0)
    for name in settings:
        for r in arm_runs(name, plan, compute=False):
            for k in keys:
                v = r.get(k) or 0
                out[k] += len(v) if isinstance(v, list) else int(v)
    return out


def differences_sentence(plan: ArmPlan, summary: pd.DataFrame | None) -> str:
    """The takeaway's "not as in the paper": :func:`differences_table`'s budget, models, eps and runs, in one line."""
    t = differences_table(plan, summary).set_index("aspect")["this arm"]
    keep = [a for a in t.index if a.split(" (")[0] in ("search budget", "models", "eps", "runs per setting")]
    return "; ".join(f"{a}: {t[a]}" for a in keep) + ". Table 3.3 sets each beside the paper's."


# ------------------------------------------------------------------------------------------------
# The glance page's rows (lossbook.publish.glance)
# ------------------------------------------------------------------------------------------------
#: the label of chapter 03's answer section, where the glance page's Q1 rows link
ANSWER_TARGET = "q1-answer"


def glance_rows(scale: str) -> list[dict]:
    """Q1 per setting from the paper arm (the protocol page's rule), and the paper's 100% success rate."""
    summary = load_summary("smoke" if scale == "smoke" else "paper")
    judged = {} if summary is None else {r["setting"]: r for _, r in with_holm(summary).iterrows()}
    where = "smoke arm" if scale == "smoke" else "paper arm"
    rows = []
    for name in SETTINGS:
        r = judged.get(name)
        ours = NOT_RUN if r is None else (
            f"{r['heldout_gain_pp']:+.1f} pp [{r['ci_low']:+.1f}, {r['ci_high']:+.1f}] (held-out; Holm p "
            f"{r['holm_p']:.2g}; best of {r['runs']} reduced-budget runs, in-sample {r['insample_gain_pp']:+.2f} pp; "
            f"{r['model_scale']} model, {r['model_epochs']} epochs; eps {r['eps']:.3g}, "
            f"Table III {r['table_iii_eps']:.3g}; {SIZE_WORDS[r['size']]})")
        rows.append({"paper": "AutoLoss-AR",
                     "claim": f"Q1: the loss the search picks beats CE under PGD-10 on held-out images ({name})",
                     "the paper's number": f"+{paper_gain(name)} pp (in-sample, full budget)", "ours": ours,
                     "scale": where,
                     "verdict": NOT_RUN if r is None else r["direction"], "target": ANSWER_TARGET})
    if judged:
        # the protocol page: "descriptive, in-sample, and has no verdict"
        rows.append({"paper": "AutoLoss-AR", "claim": "\"the success rate of searching for losses exceeding the "
                     "baseline is 100%\" (Section V-C; per run or per setting, both read here)",
                     "the paper's number": "100%", "ours": success_sentence(summary),
                     "scale": where, "target": ANSWER_TARGET, "verdict": DESCRIPTIVE})
    return rows
