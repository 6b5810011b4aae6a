"""The "Results at a glance" page: every claim of both papers that the book tests, the paper's number,
ours with its uncertainty, the scale and the verdict, generated from the committed result files.

Verdicts: *reproduced*, *not reproduced*, *inconclusive* (an interval that straddles the line) and
*not run at this scale* (no result file yet; the page says so rather than implying a number).
"""
from __future__ import annotations

import pandas as pd

from lossbook.chapters.exact_risk import NO_ROOM, NO_ROOM_IMAGES
from lossbook.chapters.paper_arm import answer, load_summary
from lossbook.chapters.registry import BEYOND_PAPERS, CHAPTERS, PAPERS_CLAIMS
from lossbook.core.stats import DESCRIPTIVE, NOT_COMPARABLE, NOT_RUN, PENDING

COLUMNS = ["paper", "claim", "the paper's number", "ours", "scale", "verdict", "section", "heading", "target"]


def claims_table(scale: str = "cpu") -> pd.DataFrame:
    """One row per tested claim (see the module docstring)."""
    rows = [{**row, "section": f"chapters/{ch.name}", "heading": ch.glance_heading}
            for ch in CHAPTERS.values() if ch.glance_rows for row in ch.glance_rows(scale)]
    return pd.DataFrame(rows, columns=COLUMNS)


#: where a claim sits on the page: the papers' own claims, what the book measures beyond them, and
#: comparisons that the book's regime cannot make (a verdict there would not be about the paper's claim)
SECTIONS = (PAPERS_CLAIMS, BEYOND_PAPERS, "What could not be compared")


def _section(row) -> str:
    if row["verdict"] in (NO_ROOM, NOT_COMPARABLE):
        return SECTIONS[2]
    return row["heading"]


#: every verdict a row can carry, in the order the page counts them
VERDICTS = ("reproduced", "not reproduced", "inconclusive", DESCRIPTIVE, NO_ROOM, NOT_COMPARABLE, PENDING,
            NOT_RUN)


def _counts(rows: pd.DataFrame) -> str:
    """"**reproduced** 8, **inconclusive** 15, ..." over ``rows`` (verdicts that occur only)."""
    counts = rows["verdict"].value_counts()
    return ", ".join(f"**{v}** {int(counts[v])}" for v in VERDICTS if counts.get(v, 0))


def _table(rows: pd.DataFrame) -> list[str]:
    out = ["| paper | claim | the paper's number | ours | scale | verdict |", "|---|---|---|---|---|---|"]
    return out + [f"| {r['paper']} | {_link(r)} | {r[COLUMNS[2]]} | {r['ours']} | {r['scale']} | {r['verdict']} |"
                  for _, r in rows.iterrows()]


def _link(row) -> str:
    """The claim, linked to the section of its chapter that judges it (its ``target`` label), else to the chapter."""
    if isinstance(row["target"], str) and row["target"]:
        return f"{{ref}}`{row['claim']} <{row['target']}>`"
    return f"[{row['claim']}]({row['section']}.ipynb)"


#: a section of the glance page with more rows than this shows them in a closed dropdown
OPEN_ROWS = 8


def markdown(scale: str = "cpu", q1_figure: str | None = None) -> str:
    """The page: Question 1 as one panel (``q1_figure``, a path relative to the page, where drawn) with
    its answer, then the claims in three sections; Question 1's 24 rows in a closed dropdown."""
    t = claims_table(scale)
    sections = t.apply(_section, axis=1)
    is_q1 = t["claim"].str.startswith("Q1: ")
    out = ["# Results at a glance", "",
           "Every claim of the two papers that this book tests, with the paper's number, ours (with its 95% "
           "interval over the images where the claim is about a risk), the model scale and eps it was run at, and "
           "the verdict; each claim links to the section of its chapter that judges it. Generated from the committed "
           "result files when the book is built; a claim whose results are not computed at this scale says so.", "",
           *[f"- {title}: {_counts(t[sections == title])}." for title in SECTIONS if (sections == title).any()], "",
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
            out += [f"Where CE's PGD-10 already misses fewer than {NO_ROOM_IMAGES} of the verified images (counting the "
                    "undecided ones it does not break), no loss has room to make PGD tighter; where our regime differs "
                    "too much from the paper's (chapter 6: clean accuracy or accuracy under FGSM before adversarial "
                    "training more than 10 points from the paper's tables), a verdict would not be about the paper's "
                    "claim. These rows are reported, not judged.", ""]
        if len(rows) > OPEN_ROWS:  # a long section: its counts above, its rows one click away
            out += [f":::{{admonition}} {title}, claim by claim ({len(rows)} rows)", ":class: dropdown",
                    *_table(rows), ":::"]
        else:
            out += _table(rows) if len(rows) else ["None at this scale."]
        out += [""]
    return "\n".join(out)
