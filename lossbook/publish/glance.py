"""The "Results at a glance" page: every claim of both papers that the book tests, the paper's number,
ours with its uncertainty, the scale and the verdict, generated from the committed result files.

Verdicts: *reproduced*, *not reproduced*, *inconclusive* (an interval that straddles the line) and
*not run at this scale* (no result file yet; the page says so rather than implying a number).
"""
from __future__ import annotations

import pandas as pd

from lossbook.chapters import atras_sweep as atras
from lossbook.chapters import exact_risk as gap
from lossbook.chapters import landscape as LS
from lossbook.chapters import transfer as T
from lossbook.chapters.gp_search import SETTINGS, paper_gain
from lossbook.chapters.landscape import PAPER_Q3
from lossbook.chapters.paper_arm import answer, load_summary, with_holm
from lossbook.core.stats import paired_gain, verdict
from lossbook.publish.params import SCHEMAS

NOT_RUN = "not run at this scale"
COLUMNS = ["paper", "claim", "the paper's number", "ours", "scale", "verdict", "section"]


def _q1_rows(scale: str) -> list[dict]:
    """Q1 per setting from the paper arm (the protocol page's rule), and the paper's 100% success rate."""
    summary = load_summary("smoke" if scale == "smoke" else "paper")
    judged = {} if summary is None else {r["setting"]: r for _, r in with_holm(summary).iterrows()}
    where = "smoke arm" if scale == "smoke" else "paper arm"
    rows = []
    for name in SETTINGS:
        r = judged.get(name)
        ours = NOT_RUN if r is None else (
            f"{r['heldout_gain_pp']:+.1f} pp [{r['ci_low']:+.1f}, {r['ci_high']:+.1f}] (held-out; Holm p "
            f"{r['holm_p']:.2g}; {r['model_scale']} model, {r['model_epochs']} epochs; eps {r['eps']:.4g}, "
            f"Table III {r['table_iii_eps']:.4g}; paper's gain {r['size']})")
        rows.append({"paper": "AutoLoss-AR", "claim": f"Q1: a searched loss beats CE under PGD-10 ({name})",
                     "the paper's number": f"+{paper_gain(name)} pp", "ours": ours, "scale": where,
                     "verdict": NOT_RUN if r is None else r["direction"], "section": "chapters/03_gp_search"})
    if judged:
        all_beat = sum(int(r["runs_beating_ce"]) == int(r["runs"]) for r in judged.values())
        runs = sum(int(r["runs"]) for r in judged.values())
        beat = sum(int(r["runs_beating_ce"]) for r in judged.values())
        rows.append({"paper": "AutoLoss-AR", "claim": "in every setting, every search finds a loss beating CE (on the "
                     "search images)", "the paper's number": "100% success rate", "ours": f"all unseeded runs beat CE "
                     f"in {all_beat} of {len(judged)} judged settings ({beat} of {runs} runs; in-sample, descriptive)",
                     "scale": where, "verdict": "reproduced" if all_beat == len(judged) else "not reproduced",
                     "section": "chapters/03_gp_search"})
    return rows


def _atras_rows(scale: str) -> list[dict]:
    rows = []
    for ds in ("mnist", "cifar10"):
        cfg = atras.atras_config(ds, scale)
        df, tm = atras.dataset_results(cfg, [list(a) for a in atras.ARCHITECTURES], [], compute=False)
        if df is None or df.empty:
            continue
        for _, c in atras.claims(df, {ds: tm} if tm is not None else None).iterrows():
            rows.append({"paper": "ATRAS", "claim": f"{c['claim']} ({ds})", "the paper's number": "stated, Tables I-II",
                         "ours": f"{c['evidence']} ({len(df)} MLPs; descriptive, no interval)", "scale": scale,
                         "verdict": "reproduced" if c["supported"] else "not reproduced",
                         "section": "chapters/06_atras_sweep"})
    return rows


def _transfer_rows(scale: str) -> list[dict]:
    """Q2: the searched losses keep a gain over CE under other (model, norm) settings (Fig. 8)."""
    rows, cross = [], T.saved_cross(scale)
    for ds in ("mnist", "cifar10"):
        table = cross.get(ds)
        if table is None or table.empty:
            rows.append({"paper": "AutoLoss-AR", "claim": f"Q2: searched losses transfer to other models and norms ({ds})",
                         "the paper's number": "stated: mostly (Fig. 8)", "ours": NOT_RUN, "scale": scale,
                         "verdict": NOT_RUN, "section": "chapters/04_transfer"})
            continue
        a = T.q2_answer(table)
        rows.append({"paper": "AutoLoss-AR", "claim": f"Q2: searched losses transfer to other models and norms ({ds})",
                     "the paper's number": "stated: mostly (Fig. 8)",
                     "ours": f"gain over CE > 0 in {a['k']} of {a['n']} cells with a gain or loss, {a['ties']} ties left "
                     f"out (sign test p = {a['p']:.2g}; median {a['median_pp']:+.1f} pp; cells share images, so p is "
                     f"optimistic; {a['losses']} searched losses)",
                     "scale": scale, "verdict": a["verdict"], "section": "chapters/04_transfer"})
    return rows


def _landscape_rows(scale: str) -> list[dict]:
    """Q3: why the searched loss wins (MNIST: easier to optimize; CIFAR-10: better local consistency)."""
    source = SCHEMAS["05_landscape"]["source"].default
    try:
        studies, _, _ = LS.chapter_studies(source, list(PAPER_Q3), scale) if scale != "smoke" else ({}, [], 0)
    except (FileNotFoundError, ValueError):
        studies = {}
    rows = []
    for ds, stated in PAPER_Q3.items():
        row = {"paper": "AutoLoss-AR", "claim": f"Q3: the searched loss wins mostly by {stated} ({ds})",
               "the paper's number": "stated (Fig. 9)", "scale": scale, "section": "chapters/05_landscape"}
        st = studies.get(ds)
        if st is None:
            rows.append({**row, "ours": NOT_RUN, "verdict": NOT_RUN})
            continue
        a = LS.q3_answer(st[2], stated)
        rows.append({**row, "ours": f"of {a['searched_only']} images only the searched loss broke: {a['optimization']} by "
                     f"optimization, {a['consistency']} by local consistency (sign test p = {a['p']:.2g}; {a['images']} "
                     f"raced)", "verdict": a["verdict"]})
    return rows


def _exact_rows(scale: str) -> list[dict]:
    rows = []
    for st in gap.studies(scale):
        t = gap.load_study(st, scale)
        if t is None:
            continue
        if {"PGD-10 searched", "PGD-10 ce"} <= set(t.columns):
            pg = paired_gain(t["PGD-10 searched"].to_numpy(bool), t["PGD-10 ce"].to_numpy(bool))
            ce_missed = int(((t["status"] == "vulnerable") & ~t["PGD-10 ce"].astype(bool)).sum())
            no_room = ce_missed < NO_ROOM_IMAGES
            rows.append({"paper": "AutoLoss-AR", "claim": f"a searched loss makes PGD-10 a tighter estimate of R than CE "
                         f"({st.name()}, on verified images)", "the paper's number": "+0.7 to +2.9 pp (its CNNs, R unknown)",
                         "ours": f"{pg.gain_pp:+.1f} pp [{pg.ci_low:+.1f}, {pg.ci_high:+.1f}] (McNemar p = "
                         f"{pg.p_value:.2g}; {len(t)} verified images; CE misses {ce_missed} vulnerable images)",
                         "scale": scale, "verdict": NO_ROOM if no_room else verdict(pg),
                         "section": "chapters/07_exact_risk"})
    return rows


def claims_table(scale: str = "cpu") -> pd.DataFrame:
    """One row per tested claim (see the module docstring)."""
    rows = _q1_rows(scale) + _transfer_rows(scale) + _landscape_rows(scale) + _atras_rows(scale) + _exact_rows(scale)
    return pd.DataFrame(rows, columns=COLUMNS)


#: where a claim sits on the page: the papers' own claims, what the book measures beyond them, and
#: comparisons that the book's regime cannot make (a verdict there would not be about the paper's claim)
SECTIONS = ("The papers' claims", "Beyond the papers: where the exact risk is known", "What could not be compared")
#: an exact-risk row whose CE error is below this many images leaves PGD nothing to tighten
NO_ROOM_IMAGES = 2
NO_ROOM = "no room to improve"


def _section(row) -> str:
    if row["verdict"] == NO_ROOM:
        return SECTIONS[2]
    return SECTIONS[1] if row["section"] == "chapters/07_exact_risk" else SECTIONS[0]


def _table(rows: pd.DataFrame) -> list[str]:
    out = ["| paper | claim | the paper's number | ours | scale | verdict |", "|---|---|---|---|---|---|"]
    return out + [f"| {r['paper']} | [{r['claim']}]({r['section']}.ipynb) | {r[COLUMNS[2]]} | {r['ours']} | {r['scale']} | "
                  f"{r['verdict']} |" for _, r in rows.iterrows()]


def markdown(scale: str = "cpu", q1_figure: str | None = None) -> str:
    """The page: Question 1 as one panel (``q1_figure``, a path relative to the page, where drawn) with
    its answer, then the claims in three sections; Question 1's 24 rows in a closed dropdown."""
    t = claims_table(scale)
    counts = t["verdict"].value_counts()
    is_q1 = t["claim"].str.startswith("Q1: ")
    out = ["# Results at a glance", "",
           "Every claim of the two papers that this book tests, with the paper's number, ours (with its 95% "
           "interval over the images where the claim is about a risk), the model scale and eps it was run at, and "
           "the verdict; each claim links to its chapter. Generated from the committed result files when the book "
           "is built; a claim whose results are not computed at this scale says so.", "",
           "Verdicts over all rows: " + ", ".join(f"**{v}** {int(counts.get(v, 0))}" for v in
                                                ("reproduced", "not reproduced", "inconclusive", NO_ROOM, NOT_RUN))
           + ".", "",
           "## Question 1: does a searched loss beat cross-entropy? (AutoLoss-AR)", ""]
    if q1_figure:
        out += [f":::{{figure}} {q1_figure}", ":name: fig-glance-q1",
                ":alt: A grid of the 24 settings (rows: dataset, net and training; columns: the norm), each cell coloured "
                "by the protocol's verdict and showing the held-out gain over CE in percentage points with its 95% "
                "interval and the paper's gain.", "",
                "Question 1 in the paper's own protocol (chapter 3's paper arm): held-out gain of the searched loss over "
                "CE under PGD-10 in percentage points, its exact 95% interval, and the paper's gain; green reproduced, "
                "red not reproduced, grey inconclusive, white not run yet.", ":::", ""]
    summary = load_summary("smoke" if scale == "smoke" else "paper")
    out += [answer(summary), "", ":::{admonition} Question 1, setting by setting (24 rows)", ":class: dropdown",
            *_table(t[is_q1]), ":::", ""]
    rest = t[~is_q1]
    for title in SECTIONS:
        rows = rest[rest.apply(_section, axis=1) == title]
        out += [f"## {title}", ""]
        if title == SECTIONS[2]:
            out += [f"Where CE's PGD-10 already misses fewer than {NO_ROOM_IMAGES} of the verified images, no loss has "
                    "room to make PGD tighter: these rows are reported, not judged.", ""]
        out += _table(rows) if len(rows) else ["None at this scale."]
        out += [""]
    return "\n".join(out)
