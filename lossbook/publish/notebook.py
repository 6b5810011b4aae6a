"""Helpers every chapter calls first: parameter validation and the "how this was made" banner."""
from __future__ import annotations

import platform
from html import escape

import torch

from lossbook.chapters.registry import check as check_schema


def parameters(chapter: str, namespace: dict) -> dict:
    """Validate a chapter's parameters against its schema (:mod:`lossbook.chapters.registry`): unknown names,
    wrong types and values outside the allowed ones stop the chapter with one line. Values are
    coerced to the parameter's type in ``namespace`` (papermill's ``-p architectures 36`` is a number)."""
    params = check_schema(chapter, namespace)
    namespace.update(params)
    return params


def items(value: str) -> list[str]:
    """The items of a comma-separated parameter."""
    return [s.strip() for s in str(value).split(",") if s.strip()]


def expand(value: str, every: tuple) -> list[str]:
    """``"all"`` -> every value, anything else -> [value]."""
    return list(every) if value == "all" else [value]


def banner(chapter: str, params: dict) -> None:
    """Show, at the top of an executed chapter, the scale and parameters that produced it."""

    from IPython.display import HTML, display

    rows = "".join(f"<tr><td><code>{escape(k)}</code></td><td><code>{escape(repr(v))}</code></td></tr>"
                   for k, v in params.items())
    dev = "CUDA GPU" if torch.cuda.is_available() else "CPU"
    display(HTML(  # one line on the first screen, the parameters one click away (the takeaway comes next)
        f"<details class=\"banner\"><summary><b>{escape(chapter)}</b>, executed at scale "
        f"<b><code>{escape(str(params.get('scale', '?')))}</code></b> on a {dev} (torch {torch.__version__}, Python "
        f"{platform.python_version()}): show its {len(params)} parameters</summary>"
        f"<table><thead><tr><th>parameter</th><th>value</th></tr></thead><tbody>{rows}</tbody></table></details>"
    ))


def takeaway(question: str, answer: str, differs: str) -> None:
    """The box at the top of a chapter: its question, the answer at this scale (computed by the caller from
    the chapter's results) and how the chapter's regime differs from the paper's."""

    from IPython.display import HTML, display

    display(HTML(
        '<div class="admonition tip takeaway"><p class="admonition-title">Takeaway</p>'
        f"<p><b>Question.</b> {escape(question)}</p><p><b>Answer at this scale.</b> {escape(answer)}</p>"
        f"<p><b>Not as in the paper.</b> {escape(differs)}</p></div>"))


#: tables longer than this are shown closed, one click away
LONG_TABLE = 15


def table(obj, what: str = "rows", folded: bool = False) -> None:
    """Show a DataFrame (floats to 4 significant digits) or Styler without its index; longer than
    :data:`LONG_TABLE` rows, or ``folded``, inside a closed <details> box that says how many rows it holds (the
    page stays short, the numbers one click away)."""
    from IPython.display import HTML, display

    styler = obj if hasattr(obj, "to_html") and hasattr(obj, "data") else \
        obj.style.hide(axis="index").format(lambda v: f"{v:.4g}" if isinstance(v, float) else v)
    rows = len(styler.data)
    html = f'<div style="overflow-x:auto">{styler.to_html()}</div>'
    if rows <= LONG_TABLE and not folded:
        display(HTML(html))
    else:
        display(HTML(f"<details><summary>Show all {rows} {what}</summary>{html}</details>"))


def report_missing(missing: list, command: str) -> None:
    """Say which results of this scale are not saved yet (the chapter shows the others)."""
    if missing:
        print(f"Not computed at this scale yet, left out below: {', '.join(missing)}.\n"
              f"Compute them with `{command}` or rerun this chapter with recompute=True.")


def report_diagnostics(named_warnings: dict) -> None:
    """Say where an attack's checks fired (:mod:`lossbook.core.checks`); nothing when none did."""
    for name, warnings in named_warnings.items():
        for w in warnings or []:
            print(f"Check on {name}: {w}.")
