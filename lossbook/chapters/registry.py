"""The chapter registry: every chapter of the book, once, with what the rest of lossbook needs to know
about it. The book's build, the Reproducing page, the glance page, the command line's ``run`` and the
parameter checks all read :data:`CHAPTERS`; adding a chapter is a notebook, a module and one entry here.

A chapter's parameters (``PARAMETERS`` in its module) are checked here: by the chapter's first cell
(:func:`check`, which also rejects names that no parameter has, such as a misspelt ``-p sede 1``), and
by ``python -m lossbook run -p NAME=VALUE`` (:func:`convert`, which turns the text into the parameter's
type) before a kernel starts.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Callable

from lossbook.chapters import (
    atras_regime,
    atras_sweep,
    exact_risk,
    gp_search,
    landscape,
    paper_arm,
    toy_inconsistency,
    training,
    transfer,
)
from lossbook.params import Param, ParameterError

#: the glance page's headings: a chapter's claims sit under one of them (its ``glance_heading``)
PAPERS_CLAIMS = "The papers' claims"
BEYOND_PAPERS = "Beyond the papers: where the exact risk is known"


@dataclass(frozen=True)
class Chapter:
    """One chapter: ``name`` is its notebook's (``nbs/<name>.ipynb``) and its page's; ``parameters`` its
    papermill parameters, ``check_parameters`` the check of those that depend on each other;
    ``glance_rows(scale)`` its claims for the glance page, listed under ``glance_heading`` and linked to
    the chapter; ``computes``: whether it computes results of its own (the ``chapters`` step of
    ``reproduce``) rather than showing what earlier steps made; ``protocol``: the page (``book/<protocol>.md``)
    that fixed the chapter's verdict rule before its results, placed just before it, and ``protocol_results``
    the folder of those results (the protocol's first commit is older than anything in it)."""

    name: str
    parameters: dict[str, Param]
    check_parameters: Callable[[dict], None] | None = None
    glance_rows: Callable[[str], list[dict]] | None = None
    computes: bool = False
    glance_heading: str = PAPERS_CLAIMS
    protocol: str | None = None
    protocol_results: str | None = None


#: The chapters in reading order.
CHAPTERS: dict[str, Chapter] = {c.name: c for c in (
    Chapter("01_toy_inconsistency", toy_inconsistency.PARAMETERS, toy_inconsistency.check_parameters),
    Chapter("02_training", training.PARAMETERS),
    Chapter("03_gp_search", gp_search.PARAMETERS, gp_search.check_parameters, paper_arm.glance_rows,
            protocol="protocol_q1", protocol_results="results/search/paper-arm"),
    Chapter("04_transfer", transfer.PARAMETERS, glance_rows=transfer.glance_rows, computes=True),
    Chapter("05_landscape", landscape.PARAMETERS, glance_rows=landscape.glance_rows, computes=True),
    Chapter("06_atras_sweep", atras_sweep.PARAMETERS, atras_sweep.check_parameters, atras_regime.glance_rows,
            computes=True, protocol="protocol_atras", protocol_results="results/atras/regime"),
    Chapter("07_exact_risk", exact_risk.PARAMETERS, exact_risk.check_parameters, exact_risk.glance_rows,
            computes=True, glance_heading=BEYOND_PAPERS),
)}


def _unknown(chapter: str, name: str) -> ParameterError:
    """An unknown parameter name, with the allowed ones and the nearest if it looks like a typo."""
    params = schema(chapter)
    near = difflib.get_close_matches(name, list(params), n=1)
    return ParameterError(f"unknown parameter {name!r} of chapter {chapter}; allowed: {', '.join(params)}"
                          + (f"; did you mean {near[0]!r}?" if near else ""))


def check_relations(chapter: str, values: dict) -> None:
    """:class:`ParameterError` if the chapter's values (missing ones take their defaults) do not fit together."""
    full = {k: p.default for k, p in schema(chapter).items()} | values
    relations = CHAPTERS[chapter].check_parameters
    if relations is not None:
        relations(full)


def schema(chapter: str) -> dict[str, Param]:
    """The parameters of ``chapter``; :class:`ParameterError` listing the chapters if there is none such."""
    if chapter not in CHAPTERS:
        raise ParameterError(f"unknown chapter {chapter!r}; allowed: {', '.join(map(repr, CHAPTERS))}")
    return CHAPTERS[chapter].parameters


def _coerce(p: Param, value):
    """Papermill gives numbers for text parameters such as architectures=36, and ints for floats."""
    if p.kind is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if p.kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def validate(chapter: str, name: str, value):
    """The value, coerced to the parameter's type, or :class:`ParameterError` saying what is allowed."""
    params = schema(chapter)
    if name not in params:
        raise _unknown(chapter, name)
    p = params[name]
    value = _coerce(p, value)
    why = p.allowed(value)
    if why is not None:
        raise ParameterError(f"parameter {name}={value!r} is not allowed; allowed values: {why}")
    return value


def convert(chapter: str, name: str, text: str):
    """``-p NAME=VALUE`` text to the parameter's type, validated."""
    params = schema(chapter)
    if name not in params:
        raise _unknown(chapter, name)
    kind = params[name].kind
    try:
        if kind is bool:
            value = {"true": True, "false": False}[text.strip().lower()]
        elif kind is int:
            value = int(text)
        elif kind is float:
            value = float(text)
        else:
            value = text
    except (KeyError, ValueError):
        what = {bool: "True or False", int: "a whole number", float: "a number"}[kind]
        raise ParameterError(f"parameter {name}={text!r} is not {what}; allowed values: "
                             f"{params[name].allowed(None) or what}") from None
    return validate(chapter, name, value)


_NOT_PARAMETERS = {"In", "Out", "get_ipython", "exit", "quit", "open", "nb"}


def check(chapter: str, namespace: dict) -> dict:
    """Validate a chapter's parameters as they stand in its namespace (after papermill's injected cell):
    every schema parameter present and allowed, and no other plain value defined (a misspelt name)."""
    params = schema(chapter)
    unknown = [k for k, v in namespace.items() if not k.startswith("_") and k not in _NOT_PARAMETERS
               and k not in params and isinstance(v, (str, int, float, bool, type(None)))]
    if unknown:
        raise _unknown(chapter, unknown[0])
    missing = [k for k in params if k not in namespace]
    if missing:
        raise ParameterError(f"chapter {chapter} does not define parameter {missing[0]!r} in its parameters cell")
    values = {k: validate(chapter, k, namespace[k]) for k in params}
    check_relations(chapter, values)
    return values
