"""One parameter schema per chapter: names, types, defaults and allowed values.

The same schema is used by the chapter's first cell (:func:`check`, which also rejects names that
no chapter parameter has, such as a misspelt ``-p sede 1``), by ``python -m lossbook run -p NAME=VALUE``
(:func:`convert`, which turns the text into the parameter's type) and by the command line, whose
arguments share the validators below; so the three cannot disagree.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Callable

from lossbook.chapters.exact_risk import select_studies
from lossbook.config import DATASETS, FAILURE_MODES, NETS, NORMS, SCALES, TRAININGS, check_dataset_eps, check_eps


class ParameterError(ValueError):
    """A parameter that is unknown, of the wrong type or outside its allowed values."""

    def _render_traceback_(self) -> list[str]:
        """In a notebook (IPython asks for this), the message alone: no traceback above the useful line."""
        return [f"ParameterError: {self}"]


def _unknown(chapter: str, name: str) -> ParameterError:
    """An unknown parameter name, with the allowed ones and the nearest if it looks like a typo."""
    params = schema(chapter)
    near = difflib.get_close_matches(name, list(params), n=1)
    return ParameterError(f"unknown parameter {name!r} of chapter {chapter}; allowed: {', '.join(params)}"
                          + (f"; did you mean {near[0]!r}?" if near else ""))


# ---- validators: each returns None when the value is fine, else what is allowed --------------------
def choice(values) -> Callable[[Any], str | None]:
    values = tuple(values)
    return lambda v: None if v in values else ", ".join(map(repr, values))


def whole(minimum: int = 0) -> Callable[[Any], str | None]:
    return lambda v: None if isinstance(v, int) and not isinstance(v, bool) and v >= minimum else \
        f"a whole number >= {minimum}"


def number(minimum: float = 0.0, zero_means_default: bool = False) -> Callable[[Any], str | None]:
    def ok(v):
        good = isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and v != float("inf")
        if good and (v > minimum or (zero_means_default and v == 0)):
            return None
        return ("0 (the chapter's default) or " if zero_means_default else "") + f"a number > {minimum:g}"
    return ok


EPS_RULES = ("auto", "paper", "calibrate")


def eps_rule(v) -> str | None:
    """'auto', 'paper', 'calibrate' or a number > 0 (as text or a number)."""
    if v in EPS_RULES:
        return None
    try:
        x = float(v)
    except (TypeError, ValueError):
        x = float("nan")
    return None if (x > 0 and x != float("inf") and not isinstance(v, bool)) else \
        f"{', '.join(map(repr, EPS_RULES))} or a number > 0"


def listing(each: Callable[[str], bool], what: str, extra: tuple = ()) -> Callable[[Any], str | None]:
    """Comma-separated items each accepted by ``each`` (or one of ``extra``, alone)."""
    def ok(v):
        if isinstance(v, str) and (v in extra or (v.strip() and all(each(s.strip()) for s in v.split(",")))):
            return None
        return " or ".join([*map(repr, extra), f"comma-separated {what}"])
    return ok


def is_setting(s: str) -> bool:
    parts = s.split("-")
    return len(parts) == 4 and all(p in allowed for p, allowed in zip(parts, (DATASETS, NETS, TRAININGS, NORMS)))


def is_architecture(s: str) -> bool:
    return s.isdigit() and int(s) < 40


def is_point(v: str) -> bool:
    try:
        a, b = (float(t) for t in v.split(","))
    except ValueError:
        return False
    return abs(a) <= 1 and abs(b) <= 1


SETTINGS = listing(is_setting, "<dataset>-<net>-<training>-<norm> such as 'mnist-net1-st-linf'")


@dataclass(frozen=True)
class Param:
    """One chapter parameter: its default (whose type is the parameter's), validator and meaning."""

    default: Any
    allowed: Callable[[Any], str | None]
    help: str = ""

    @property
    def kind(self) -> type:
        return type(self.default)


def _common(scale_help: str) -> dict[str, Param]:
    return {"scale": Param("cpu", choice(SCALES), scale_help),
            "seed": Param(0, whole(), "seed of everything random in the chapter"),
            "recompute": Param(False, choice((True, False)), "False: show saved results; True: compute them")}


SCHEMAS: dict[str, dict[str, Param]] = {
    "01_toy_inconsistency": {
        **_common("size of the GP search on the toy (all run in seconds)"),
        "norm": Param("all", choice(NORMS + ("all",))),
        "eps": Param(0.0, number(0, zero_means_default=True), "radius for the risk table"),
        "x0": Param("auto", lambda v: None if v == "auto" or (isinstance(v, str) and is_point(v)) else
                    "'auto' or 'a,b' with -1 <= a, b <= 1", "centre of the Fig. 1 ball"),
        "fig_eps": Param(0.0, number(0, zero_means_default=True), "radius of the Fig. 1 ball when x0 is given"),
        "n_points": Param(1000, whole(1), "toy points for the risk table"),
        "interactive": Param(False, choice((True, False)), "sliders in a live session"),
    },
    "02_training": {
        **_common("smoke | cpu (committed models) | paper"),
        "dataset": Param("all", choice(DATASETS + ("all",))), "net": Param("all", choice(NETS + ("all",))),
        "training": Param("all", choice(TRAININGS + ("all",))),
    },
    "03_gp_search": {
        **_common("smoke | cpu (committed results) | paper"),
        "settings": Param("mnist-net1-st-linf,mnist-net2-st-linf,mnist-net1-at-linf,mnist-net2-at-linf", SETTINGS),
        "runs": Param(0, whole(), "runs per setting; 0: the scale's default"),
        "eps": Param("auto", eps_rule, "auto | paper | calibrate | a number"),
        "grid_scale": Param("cpu", choice(SCALES), "whose 24-setting grid the chapter shows"),
    },
    "04_transfer": {
        **_common("smoke | cpu (committed results) | paper"),
        "sources": Param("all", listing(is_setting, "settings", ("all",))),
        "cifar_searched": Param("grid", listing(is_setting, "settings", ("grid", "none"))),
        "cifar_sources": Param("mnist-net1-at-linf,mnist-net2-at-linf", listing(is_setting, "settings", ("none",))),
        "mnist_norms": Param("all", listing(lambda s: s in NORMS, "norms", ("all",))),
        "cifar_norms": Param("all", listing(lambda s: s in NORMS, "norms", ("all",))),
        "n_images": Param(0, whole(), "evaluation images; 0: the scale's default"),
    },
    "05_landscape": {
        **_common("smoke | cpu (committed results) | paper"),
        "source": Param("mnist-net1-at-linf", lambda v: None if isinstance(v, str) and is_setting(v) else
                        "a setting such as 'mnist-net1-at-linf'"),
        "datasets": Param("mnist,cifar10", listing(lambda s: s in DATASETS, "datasets")),
        "n_images": Param(0, whole(), "raced images; 0: the scale's default"),
        "steps": Param(100, whole(1), "PGD iterations of the race"),
        "resolution": Param(0, whole(), "grid points per axis; 0: the scale's default"),
        "per_kind": Param(1, whole(1), "images shown per explanation"),
        "n_examples": Param(4, whole(1), "qualitative examples per dataset"),
    },
    "06_atras_sweep": {
        **_common("smoke | cpu (committed) | paper"),
        "dataset": Param("all", choice(DATASETS + ("all",))),
        "eps": Param(0.0, number(0, zero_means_default=True), "FGSM radius"),
        "epochs": Param(0, whole(), "standard-training epochs; 0: the scale's default"),
        "adv_epochs": Param(0, whole(), "adversarial-training epochs; 0: the scale's default"),
        "architectures": Param("all", listing(is_architecture, "indices 0..39", ("all",))),
        "failure_mode": Param("sigmoid-sgd", choice(FAILURE_MODES)),
    },
    "07_exact_risk": {  # no seed: the exact risk has none, and the attacks' starts are part of each study
        **{k: v for k, v in _common("smoke | cpu (committed results) | paper (= cpu: the verified models are tiny)").items()
           if k != "seed"},
        "studies": Param("all", lambda v: None if isinstance(v, str) and v.strip() else
                         "'all' or comma-separated study names (lossbook.chapters.exact_risk.STUDIES)"),
        "n_images": Param(0, whole(), "images per study; 0: the study's own number"),
        "time_limit": Param(0.0, number(0, zero_means_default=True), "solver seconds per image"),
    },
}


# ---- relations between parameters, checked once all of a chapter's values are known ------------------
def _toy_radii(v: dict) -> None:
    """The toy lives in [-1, 1]^2 (a box of side 2); 0 means the chapter's default radius."""
    for name in ("eps", "fig_eps"):
        for norm in NORMS if v["norm"] == "all" else (v["norm"],):
            if v[name]:
                _with_name(name, v[name], lambda: check_eps(norm, v[name], 2, side=2.0))


def _search_radius(v: dict) -> None:
    if v["eps"] not in EPS_RULES:  # a number: a radius under each chosen setting's norm
        for setting in v["settings"].split(","):
            dataset, _, _, norm = setting.strip().split("-")
            _with_name("eps", v["eps"], lambda: check_dataset_eps(dataset, norm, float(v["eps"])))


def _fgsm_radius(v: dict) -> None:
    for dataset in DATASETS if v["dataset"] == "all" else (v["dataset"],):
        if v["eps"]:
            _with_name("eps", v["eps"], lambda: check_dataset_eps(dataset, "linf", v["eps"]))


def _known_studies(v: dict) -> None:
    if v["studies"] != "all":
        _with_name("studies", v["studies"], lambda: select_studies(v["studies"], v["scale"]))


def _with_name(name: str, value, check: Callable[[], None]) -> None:
    try:
        check()
    except ValueError as exc:
        raise ParameterError(f"parameter {name}={value!r} is not allowed: {exc}") from None


#: Checks that need several parameters (an eps is bounded by the norm and the images it applies to).
RELATIONS: dict[str, Callable[[dict], None]] = {
    "01_toy_inconsistency": _toy_radii, "03_gp_search": _search_radius, "06_atras_sweep": _fgsm_radius,
    "07_exact_risk": _known_studies,
}


def check_relations(chapter: str, values: dict) -> None:
    """:class:`ParameterError` if the chapter's values (missing ones take their defaults) do not fit together."""
    full = {k: p.default for k, p in schema(chapter).items()} | values
    if chapter in RELATIONS:
        RELATIONS[chapter](full)


def schema(chapter: str) -> dict[str, Param]:
    if chapter not in SCHEMAS:
        raise ParameterError(f"unknown chapter {chapter!r}; allowed: {', '.join(map(repr, SCHEMAS))}")
    return SCHEMAS[chapter]


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
