"""The book's plotting style and shared figure helpers."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.colors import ListedColormap
from matplotlib.ticker import MaxNLocator

from lossbook.config import SETTINGS
from lossbook.core.attack_registry import LOSS_STYLE

#: each PGD loss's colour and label, from the attack registry (the paper's: red for CE, blue for searched losses)
COLORS = {loss: color for loss, (color, _) in LOSS_STYLE.items()}
LOSS_LABELS = {loss: label for loss, (_, label) in LOSS_STYLE.items()}


def style() -> None:
    """Apply the book's style (called by every chapter)."""
    sns.set_theme(context="notebook", style="whitegrid", font_scale=0.95)
    plt.rcParams.update({"figure.dpi": 100, "savefig.dpi": 100, "figure.autolayout": True})


def training_curves(logs: pd.DataFrame):
    """Test accuracy and training loss per epoch, one panel per dataset, one line per model."""
    datasets = list(dict.fromkeys(logs["dataset"]))
    fig, axes = plt.subplots(2, len(datasets), figsize=(5.2 * len(datasets), 6.4), squeeze=False)
    for j, ds in enumerate(datasets):
        d = logs[logs["dataset"] == ds]
        sns.lineplot(data=d, x="epoch", y="test_acc", hue="net", style="training", marker="o", ax=axes[0, j])
        sns.lineplot(data=d, x="epoch", y="train_loss", hue="net", style="training", marker="o", ax=axes[1, j],
                     legend=False)
        axes[0, j].set(title=f"{ds}: clean test accuracy", ylabel="test accuracy")
        axes[1, j].set(title=f"{ds}: training loss (on PGD examples for AT)", ylabel="cross-entropy")
    return fig


def search_curves(runs_by_setting: dict):
    """Fitness over generations for every run (the paper's Figs. 3/4): CE baseline as a red line,
    the best run in blue, the other runs in grey; best-so-far per run."""
    names = list(runs_by_setting)
    cols = min(2 if len(names) <= 4 else 4, len(names))  # many settings: 4 small panels a row, not a tall column
    rows = int(np.ceil(len(names) / cols))
    width, height = (5.4, 3.6) if cols <= 2 else (3.4, 2.6)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False, layout="constrained")
    for ax, name in zip(axes.flat, names):
        runs = runs_by_setting[name]
        best = max(runs, key=lambda r: r["best_fitness"])
        for r in runs:
            gens = [g["generation"] for g in r["logbook"]]
            vals = [g["best_so_far"] for g in r["logbook"]]
            is_best = r is best
            ax.plot(gens, vals, color=COLORS["searched"] if is_best else "0.7", lw=2.2 if is_best else 1.2,
                    zorder=3 if is_best else 2, label="best run" if is_best else None)
        ce = float(np.mean([r["baselines"]["ce"] for r in runs]))
        ax.axhline(ce, color=COLORS["ce"], ls="--", lw=1.5, label="CE baseline")
        ax.set_title(f"{name}\neps {best['setting']['eps']:.3g}", fontsize=10)
        ax.set(xlabel="generation" if cols <= 2 or ax in axes[-1] else "", ylabel="R'' (PGD-10)" if ax in axes[:, 0] else "")
        ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
        if cols <= 2 or ax is axes.flat[0]:
            ax.legend(loc="lower right", fontsize=8)
    for ax in list(axes.flat)[len(names):]:
        ax.set_visible(False)
    return fig


def atras_accuracy_vs_params(df, source: str = "ours"):
    """Test accuracy, accuracy under FGSM before and after FGSM-AT against the parameter count."""
    datasets = list(dict.fromkeys(df["dataset"]))
    fig, axes = plt.subplots(1, len(datasets), figsize=(6.0 * len(datasets), 4.0), squeeze=False)
    series = [("test_acc", "clean test (ST)", "#4c4c4c", "o"),
              ("acc_attacked_before_at", "FGSM, before AT", COLORS["ce"], "v"),
              ("acc_attacked_after_at", "FGSM, after AT", COLORS["searched"], "^")]
    for ax, ds in zip(axes[0], datasets):
        d = df[df["dataset"] == ds]
        for col, label, color, marker in series:
            ax.scatter(d["params"], d[col], label=label, color=color, marker=marker, s=28, alpha=0.85)
        for depth, g in d.groupby("depth"):
            ax.annotate(f"{depth}", (g["params"].iloc[-1], g["acc_attacked_after_at"].iloc[-1]), fontsize=6, alpha=0.6)
        ax.set(xscale="log", xlabel="parameters", ylabel="accuracy", title=f"{ds} ({source})", ylim=(0, 1.02))
        ax.legend(fontsize=8, loc="lower left")
    return fig


def compose(panels: list, cols: int = 1):
    """One figure of several panels, each a ``(size, draw)`` pair: ``draw(subfigure)`` fills a subfigure
    of ``size`` inches. A figure with one caption and one alt text, however many datasets or images it
    shows; rows as tall as their tallest panel, columns as wide as their widest."""
    if not panels:
        raise ValueError("compose: no panels to draw (pass at least one (size, draw) pair)")
    rows = int(np.ceil(len(panels) / cols))
    grid = [panels[r * cols:(r + 1) * cols] for r in range(rows)]
    widths = [max(row[c][0][0] for row in grid if c < len(row)) for c in range(min(cols, len(panels)))]
    heights = [max(size[1] for size, _ in row) for row in grid]
    fig = plt.figure(figsize=(sum(widths), sum(heights)), layout="constrained")
    subs = fig.subfigures(rows, len(widths), squeeze=False, width_ratios=widths, height_ratios=heights)
    for (_, draw), sub in zip(panels, subs.flat):
        draw(sub)
    return fig


def _figure(fig, size):
    """``fig`` (a figure or subfigure to draw into), or a new figure of ``size`` inches."""
    return fig if fig is not None else plt.figure(figsize=size, layout="constrained")


def transfer_heatmap_size(tm) -> tuple:
    return (0.75 * len(tm) + 3, 0.6 * len(tm) + 2)


def transfer_heatmap(tm, title: str, fig=None):
    """Accuracy of model j (columns) on FGSM examples crafted on model i (rows)."""
    ax = _figure(fig, transfer_heatmap_size(tm)).subplots()
    fig = ax.figure
    sns.heatmap(tm, annot=True, fmt=".2f", cmap="viridis", vmin=0, vmax=1, ax=ax, cbar_kws={"label": "accuracy"},
                annot_kws={"fontsize": 7})
    ax.set(xlabel="evaluated on (j)", ylabel="FGSM crafted on (i)", title=title)
    ax.tick_params(labelsize=7)
    return fig


def transfer_heatmaps(matrices: dict):
    """:func:`transfer_heatmap` of each ``title: matrix``, one under the other, in one figure."""
    return compose([(transfer_heatmap_size(tm), lambda sub, tm=tm, t=t: transfer_heatmap(tm, t, fig=sub))
                    for t, tm in matrices.items()])




def _eps_layout(sweeps: list, cols: int | None):
    panels = [(df, steps) for df in sweeps for steps in dict.fromkeys(df["steps"])]
    cols = cols or (len(dict.fromkeys(panels[0][0]["steps"])) if panels else 1)
    return panels, cols, int(np.ceil(len(panels) / cols))


def eps_curves_size(sweeps: list, cols: int | None = None, panel: tuple = (4.6, 3.2)) -> tuple:
    _, cols, rows = _eps_layout(sweeps, cols)
    return (panel[0] * cols, panel[1] * rows)


def eps_curves(sweeps: list, title_of=lambda df, steps: f"{df['target'].iloc[0]}, PGD-{steps}",
               cols: int | None = None, fig=None, panel: tuple = (4.6, 3.2)):
    """R'' against eps, one panel of ``panel`` inches per (setting, PGD budget) (the paper's Figs. 5/6):
    CE red, the searched loss blue, C&W and DLR as thinner references."""
    panels, cols, rows = _eps_layout(sweeps, cols)
    fig = _figure(fig, eps_curves_size(sweeps, cols, panel))
    axes = fig.subplots(rows, cols, squeeze=False, sharey=True)
    for ax, (df, steps) in zip(axes.flat, panels):
        d = df[df["steps"] == steps]
        for loss in ("dlr", "cw", "ce", "searched"):
            g = d[d["loss"] == loss]
            main = loss in ("ce", "searched")
            ax.plot(g["eps"], g["risk"], marker="o" if main else ".", color=COLORS[loss], lw=2 if main else 1,
                    ls="-" if main else ":", label=LOSS_LABELS[loss], zorder=3 if main else 2)
        ax.axvline(d.loc[d["factor"] == 1.0, "eps"].iloc[0], color="0.6", lw=0.8)
        ax.set(title=title_of(df, steps), xlabel="eps", ylabel="R''", ylim=(0, 1.02))
        ax.xaxis.set_major_locator(MaxNLocator(4))
        ax.legend(fontsize=7, loc="lower right")
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    return fig


def gain_heatmap_size(matrix) -> tuple:
    return (0.9 * matrix.shape[1] + 3.2, 0.55 * matrix.shape[0] + 2.2)


def gain_heatmap(matrix, title: str, label: str = "gain over CE (pp)", fig=None):
    """Source x target matrix of gains in pp (Fig. 8) on a diverging scale centred at 0: blue for gains,
    red for losses, white for none, the same range on both sides so that -15 pp looks as large as +15."""
    ax = _figure(fig, gain_heatmap_size(matrix)).subplots()
    fig = ax.figure
    span = max(1.0, float(matrix.abs().max().max()))
    sns.heatmap(matrix, annot=True, fmt="+.1f", cmap="RdBu", center=0, vmin=-span, vmax=span, ax=ax,
                cbar_kws={"label": label}, annot_kws={"fontsize": 9})
    ax.set(xlabel="evaluated under (test setting)", ylabel="loss searched under", title=title)
    ax.tick_params(labelsize=9)
    plt.setp(ax.get_xticklabels(), rotation=40, ha="right")
    return fig


def gain_heatmaps(heatmaps: list):
    """:func:`gain_heatmap` of each ``(matrix, title, label)``, stacked in one figure."""
    return compose([(gain_heatmap_size(m), lambda sub, m=m, t=t, lab=lab: gain_heatmap(m, t, lab, fig=sub))
                    for m, t, lab in heatmaps])


def landscape_panel(ax, item, which: str = "ce", title: str = ""):
    """One local landscape: 0-1 outcome (green correct, grey misclassified), contours of one loss, and
    both PGD paths (CE red, searched blue) projected onto the plane."""
    ax.pcolormesh(item.a, item.b, item.correct.astype(float), cmap=ListedColormap(["#bdbdbd", "#a1d99b"]),
                  vmin=0, vmax=1, shading="auto")
    values = item.ce if which == "ce" else item.searched
    cs = ax.contour(item.a, item.b, values, levels=10, colors="k", linewidths=0.6, alpha=0.7)
    ax.clabel(cs, fontsize=7, fmt="%.2g")
    for path, key in ((item.path_ce, "ce"), (item.path_searched, "searched")):
        ax.plot(path[:, 0], path[:, 1], color=COLORS[key], lw=1.2, label=f"PGD path, {LOSS_LABELS[key]}")
        ax.plot(*path[-1], marker="*", ms=9, color=COLORS[key], mec="k", mew=0.5)
    ax.plot(0, 0, marker="o", color="k", ms=4)
    ax.set(xlabel="searched-loss direction", ylabel="CE direction (orthogonalized)",
           title=title or f"contours of {LOSS_LABELS[which]}")
    ax.set_aspect("equal")
    return ax


LANDSCAPE_PAIR_SIZE = (9.6, 4.4)


def landscape_pair(item, target: str, fig=None):
    """CE's and the searched loss's local landscapes of one raced image side by side, titled with the
    explanation and CE at both endpoints (Fig. 9)."""
    fig = _figure(fig, LANDSCAPE_PAIR_SIZE)
    axes = fig.subplots(1, 2)
    landscape_panel(axes[0], item, "ce", "contours of CE")
    landscape_panel(axes[1], item, "searched", "contours of the searched loss")
    axes[1].legend(fontsize=7, loc="lower left")
    fig.suptitle(f"{target}, test image {item.index} (label {item.label}): {item.explanation or 'no searched-only win'}; "
                 f"CE at CE's end {item.ce_at_ce_end:.2f}, at the searched loss's end {item.ce_at_searched_end:.2f}",
                 fontsize=9)
    return fig


def landscape_pairs(pairs: list):
    """:func:`landscape_pair` of each ``(item, target)``, one under the other in one figure."""
    return compose([(LANDSCAPE_PAIR_SIZE, lambda sub, it=it, t=t: landscape_pair(it, t, fig=sub)) for it, t in pairs])


def qualitative_size(ex) -> tuple:
    return (5.4, 1.9 * len(ex.index) + 0.4)


def qualitative(ex, class_names=None, title: str = "", fig=None):
    """Clean image, CE adversary and searched-loss adversary per row, with predictions (Fig. 10)."""
    n = len(ex.index)
    name = (lambda c: class_names[c]) if class_names else str
    fig = _figure(fig, qualitative_size(ex))
    axes = fig.subplots(n, 3, squeeze=False)
    for i in range(n):
        for j, (img, pred, head) in enumerate(((ex.clean[i], ex.label[i], "clean"), (ex.adv_ce[i], ex.pred_ce[i], "CE"),
                                                (ex.adv_searched[i], ex.pred_searched[i], "searched"))):
            ax = axes[i, j]
            im = np.transpose(img, (1, 2, 0))
            ax.imshow(im.squeeze(-1) if im.shape[-1] == 1 else im, cmap="gray" if im.shape[-1] == 1 else None,
                      vmin=0, vmax=1)
            wrong = j > 0 and pred != ex.label[i]
            ax.set_title(f"{head}: {name(int(pred))}", fontsize=8, color="#b30000" if wrong else "black")
            ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def qualitatives(examples: list):
    """:func:`qualitative` of each ``(ex, class_names, title)`` side by side, in one figure."""
    return compose([(qualitative_size(ex), lambda sub, ex=ex, c=c, t=t: qualitative(ex, c, t, fig=sub))
                    for ex, c, t in examples], cols=len(examples))


def eps_gains_size(sweeps: list, cols: int = 2, panel: tuple = (4.6, 3.0)) -> tuple:
    cols = min(cols, len(sweeps))
    return (panel[0] * cols, panel[1] * int(np.ceil(len(sweeps) / cols)) + 0.5)


def eps_gains(sweeps: list, cols: int = 2, fig=None, panel: tuple = (4.6, 3.0)):
    """The same sweeps as differences to CE in pp (zoomed in where :func:`eps_curves` overlap): one
    panel of ``panel`` inches per setting, the searched loss solid and C&W/DLR dotted, PGD-10 thin and
    PGD-100 thick."""
    cols = min(cols, len(sweeps))
    rows = int(np.ceil(len(sweeps) / cols))
    fig = _figure(fig, eps_gains_size(sweeps, cols, panel))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, df in zip(axes.flat, sweeps):
        wide = df.pivot_table(index=["steps", "eps"], columns="loss", values="risk")
        for steps in wide.index.get_level_values(0).unique():
            w = wide.loc[steps]
            for loss in ("searched", "cw", "dlr"):
                ax.plot(w.index, 100 * (w[loss] - w["ce"]), color=COLORS[loss], ls="-" if loss == "searched" else ":",
                        lw=2.2 if steps == wide.index.get_level_values(0).max() else 1.0, marker=".",
                        label=f"{LOSS_LABELS[loss]}, PGD-{steps}")
        ax.axhline(0, color=COLORS["ce"], lw=1)
        ax.set(title=df["target"].iloc[0], xlabel="eps", ylabel="R'' minus CE's (pp)")
        ax.xaxis.set_major_locator(MaxNLocator(4))
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=3, fontsize=7)
    for ax in list(axes.flat)[len(sweeps):]:
        ax.set_visible(False)
    return fig


#: the smaller panels of :func:`eps_curves_and_gains`: 4 a row (two settings' PGD-10 and PGD-100)
COMPACT_PANEL = (3.4, 2.5)


def eps_curves_and_gains(sweeps: list):
    """:func:`eps_curves` (two settings a row) above :func:`eps_gains` (three a row) of the same sweeps,
    in one figure of smaller panels."""
    curves = min(4, len(_eps_layout(sweeps, None)[0]))
    gains = min(3, len(sweeps))
    return compose([(eps_curves_size(sweeps, curves, COMPACT_PANEL),
                     lambda sub: eps_curves(sweeps, cols=curves, fig=sub, panel=COMPACT_PANEL)),
                    (eps_gains_size(sweeps, gains, COMPACT_PANEL),
                     lambda sub: eps_gains(sweeps, gains, fig=sub, panel=COMPACT_PANEL))])


def grid_verdicts(summary: pd.DataFrame, column: str = "heldout_gain_pp", suffix: str = "", verdict: str = "verdict"):
    """The 24-setting picture: held-out gain over CE (pp) per (model, norm), each cell annotated with
    our gain and its 95% interval, the paper's gain and the verdict; settings not run stay blank."""

    models = list(dict.fromkeys(s.rsplit("-", 1)[0] for s in SETTINGS))
    norms = ["linf", "l1", "l2"]
    values = pd.DataFrame(np.nan, index=models, columns=norms)
    notes = pd.DataFrame("not run", index=models, columns=norms)
    mark = {"reproduced": "✓", "not reproduced": "✗", "inconclusive": "?"}
    for _, r in summary.iterrows():
        m, n = r["setting"].rsplit("-", 1)
        values.loc[m, n] = r[f"{column}{suffix}"]
        said = mark[r[verdict + suffix]]
        notes.loc[m, n] = (f"{r[f'{column}{suffix}']:+.1f} {said}\n[{r[f'ci_low{suffix}']:+.1f}, "
                           f"{r[f'ci_high{suffix}']:+.1f}]\npaper {r['paper_gain_pp']:+.1f}")
    fig, ax = plt.subplots(figsize=(7.2, 6.2))
    lim = max(1.0, float(np.nanmax(np.abs(values.values))) if values.notna().any().any() else 1.0)
    sns.heatmap(values, annot=notes, fmt="", cmap="RdBu", center=0, vmin=-lim, vmax=lim, ax=ax,
                cbar_kws={"label": "held-out gain over CE (pp)"}, annot_kws={"fontsize": 7}, linewidths=0.5,
                linecolor="white")
    ax.set(xlabel="norm", ylabel="dataset-net-training",
           title="✓ reproduced  ✗ not reproduced  ? inconclusive (95% paired interval)")
    ax.tick_params(labelsize=8)
    return fig


def gap_bars(gaps: dict, exact_risk: dict, cols: int = 3):
    """Chapter 07: each attack's approximation error E = R - R'' in pp as a bar from 0 (lighter where
    unknown images make it a range), with its 95% interval as a whisker; one panel per study, titled with
    its exact R, ``cols`` panels a row, attacks in the same order in every panel."""
    names = list(gaps)
    cols = min(cols, len(names))
    rows = int(np.ceil(len(names) / cols))
    n_attacks = max(len(g) for g in gaps.values())
    fig, axes = plt.subplots(rows, cols, figsize=(4.4 * cols, (0.9 + 0.24 * n_attacks) * rows), squeeze=False,
                             layout="constrained")
    for ax, name in zip(axes.flat, names):
        g, (lo, hi) = gaps[name], exact_risk[name]
        y = np.arange(len(g))
        colors = [COLORS["searched"] if "searched" in a else "#333333" if a == "any attack" else COLORS["cw"]
                  for a in g["attack"]]
        low, high = 100 * g["E_low"].to_numpy(), 100 * g["E_high"].to_numpy()
        ax.barh(y, low, color=colors, height=0.7)
        ax.barh(y, high - low, left=low, color=colors, alpha=0.3, height=0.7)
        ax.errorbar(low, y, xerr=[low - 100 * g["E_ci_low"].to_numpy(), 100 * g["E_ci_high"].to_numpy() - low],
                    fmt="none", ecolor="0.4", lw=0.8, capsize=2)
        ax.set_yticks(y, g["attack"], fontsize=7)
        ax.invert_yaxis()
        ax.set_xlim(0, max(1.0, 100 * g["E_ci_high"].max()) * 1.05)
        r = f"R = {lo:.3f}" if hi == lo else f"R in [{lo:.3f}, {hi:.3f}]"
        ax.set_title(f"{name}\n{r}", fontsize=8)
        ax.set_xlabel("E = R - R'' (pp)", fontsize=8)
        ax.tick_params(axis="x", labelsize=7)
    for ax in list(axes.flat)[len(names):]:
        ax.set_visible(False)
    return fig


def unfound_examples(images, counterexamples, labels, predictions, titles, max_shown: int = 6):
    """Chapter 07: images no attack broke but the solver did: clean image, the solver's counterexample,
    their difference (scaled), with labels and the counterexample's prediction."""
    n = min(len(images), max_shown)
    fig, axes = plt.subplots(n, 3, figsize=(6.0, 2.1 * n), squeeze=False)
    for i in range(n):
        clean, adv = np.asarray(images[i]), np.asarray(counterexamples[i])
        show = (lambda a: a.transpose(1, 2, 0)) if clean.shape[0] == 3 else (lambda a: a[0])
        diff = adv - clean
        cmap = None if clean.shape[0] == 3 else "gray"
        axes[i, 0].imshow(show(clean), cmap=cmap, vmin=0, vmax=1)
        axes[i, 0].set_title(f"{titles[i]}\nclean: {labels[i]}", fontsize=8)
        axes[i, 1].imshow(show(adv), cmap=cmap, vmin=0, vmax=1)
        axes[i, 1].set_title(f"solver's point: {predictions[i]}", fontsize=8, color=COLORS["ce"])
        m = float(np.abs(diff).max()) or 1.0
        axes[i, 2].imshow(show(diff).mean(-1) if clean.shape[0] == 3 else show(diff), cmap="RdBu_r", vmin=-m, vmax=m)
        axes[i, 2].set_title(f"difference (max {m:.3f})", fontsize=8)
        for ax in axes[i]:
            ax.axis("off")
    return fig


def solve_times(tables: dict):
    """Chapter 07: the solver's time per image (images no attack broke), one box per study, by outcome."""
    rows = [{"study": name, "seconds": s, "outcome": st} for name, t in tables.items()
            for s, st, by in zip(t["seconds"], t["status"], t["by"]) if by != "attack"]
    fig, ax = plt.subplots(figsize=(9.0, 0.6 + 0.55 * len(tables)))
    if rows:
        d = pd.DataFrame(rows)
        state = np.random.get_state()  # seaborn jitters with numpy's global generator: seeded, the figure is the same
        np.random.seed(0)              # in every build; the caller's random state is given back
        sns.stripplot(data=d, x="seconds", y="study", hue="outcome", ax=ax, size=3, alpha=0.7, dodge=True,
                      palette={"robust": COLORS["dlr"], "vulnerable": COLORS["ce"], "unknown": COLORS["cw"]})
        np.random.set_state(state)
        ax.set_xscale("log")
    ax.set(xlabel="seconds per image (log scale)", ylabel="")
    return fig


#: colours of the protocol's verdicts (the glance page's Question 1 panel)
VERDICT_COLORS = {"reproduced": "#a1d99b", "not reproduced": "#fc9272", "inconclusive": "#d9d9d9", "not run": "#ffffff"}


def q1_panel(summary, settings: list, paper_gain: dict):
    """Question 1's 24 settings at a glance: one cell per (dataset, net, training) x norm, coloured by the
    protocol's verdict, with the held-out gain over CE, its interval and the paper's gain."""
    rows = list(dict.fromkeys(s.rsplit("-", 1)[0] for s in settings))
    norms = list(dict.fromkeys(s.rsplit("-", 1)[1] for s in settings))
    judged = {} if summary is None else {r["setting"]: r for _, r in summary.iterrows()}
    fig, ax = plt.subplots(figsize=(2.3 * len(norms) + 1.8, 0.62 * len(rows) + 0.9), layout="constrained")
    for i, row in enumerate(rows):
        for j, norm in enumerate(norms):
            name, r = f"{row}-{norm}", judged.get(f"{row}-{norm}")
            verdict = "not run" if r is None else r["direction"]
            ax.add_patch(plt.Rectangle((j, i), 1, 1, facecolor=VERDICT_COLORS[verdict], edgecolor="white", lw=2))
            text = "not run" if r is None else f"{r['heldout_gain_pp']:+.1f} [{r['ci_low']:+.1f}, {r['ci_high']:+.1f}]"
            ax.text(j + 0.5, i + 0.42, text, ha="center", va="center", fontsize=10)
            ax.text(j + 0.5, i + 0.78, f"paper +{paper_gain[name]}", ha="center", va="center", fontsize=8, color="0.35")
    ax.set(xlim=(0, len(norms)), ylim=(len(rows), 0), xticks=[j + 0.5 for j in range(len(norms))],
           yticks=[i + 0.5 for i in range(len(rows))])
    ax.set_xticklabels(norms, fontsize=10)
    ax.set_yticklabels(rows, fontsize=10)
    ax.tick_params(length=0)
    ax.xaxis.tick_top()
    for side in ax.spines.values():
        side.set_visible(False)
    handles = [plt.Rectangle((0, 0), 1, 1, facecolor=c, edgecolor="0.6") for c in VERDICT_COLORS.values()]
    fig.legend(handles, list(VERDICT_COLORS), loc="outside lower center", ncol=4, fontsize=9, frameon=False)
    return fig
