"""Chapter parameters: what a value may be. :class:`Param` (a default, whose type is the parameter's,
a validator and a meaning) and the validators, which return None for a good value and otherwise what
is allowed. Each chapter declares its parameters with them (``PARAMETERS`` in its module); the
command line's arguments share the same validators, so the two cannot disagree."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from lossbook.config import DATASETS, NETS, NORMS, SCALES, TRAININGS


class ParameterError(ValueError):
    """A parameter that is unknown, of the wrong type or outside its allowed values."""

    def _render_traceback_(self) -> list[str]:
        """In a notebook (IPython asks for this), the message alone: no traceback above the useful line."""
        return [f"ParameterError: {self}"]


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


setting_list = listing(is_setting, "<dataset>-<net>-<training>-<norm> such as 'mnist-net1-st-linf'")


@dataclass(frozen=True)
class Param:
    """One chapter parameter: its default (whose type is the parameter's), validator and meaning."""

    default: Any
    allowed: Callable[[Any], str | None]
    help: str = ""

    @property
    def kind(self) -> type:
        return type(self.default)


def common(scale_help: str) -> dict[str, Param]:
    """The parameters every chapter has: scale, seed and recompute (``scale_help`` says what each scale shows)."""
    return {"scale": Param("cpu", choice(SCALES), scale_help),
            "seed": Param(0, whole(), "seed of everything random in the chapter"),
            "recompute": Param(False, choice((True, False)), "False: show saved results; True: compute them")}


def with_name(name: str, value, check: Callable[[], None]) -> None:
    """Run ``check``; a ValueError it raises becomes a :class:`ParameterError` naming the parameter."""
    try:
        check()
    except ValueError as exc:
        raise ParameterError(f"parameter {name}={value!r} is not allowed: {exc}") from None
