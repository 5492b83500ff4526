"""Method options: each one declared once, with its type, default, help text and validation.

An :class:`Option` is what a rule takes besides the batch: ``rho``, ``phi``, m-SAM's micro-batch
size, ... A rule spec (:data:`landscape.optim.RULES`) lists the options of its rule; the run
configuration (``RunConfig`` fields and ``config.json`` keys), its validation, the ``landscape
train`` flags and ``make_rule``'s keywords are all read from those lists. Options that several
rules take (``rho``, ``rho_warmup``, ``eta``, ``beta``, the adapter options) are declared here
once and referenced by every spec that takes them, with a per-rule default where the rules
differ (``RHO.with_default(0.5)`` for ASAM); an option of one rule alone is declared next to
that rule's spec in :mod:`landscape.optim.rules`.

An option goes to one or more *targets*: the rule's constructor (``"rule"``, under ``keyword``
when that differs from the option's name: ``micro_batch`` -> ``m``), the base optimizer
(``"optimizer"``: SGLD's ``beta``) or the LoRA adapters (``"adapters"``: ``add_lora``'s ``rank``,
``alpha``, ``targets``).

This module imports neither torch nor the rules, so that the command line can build its flags
from it without loading torch.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from landscape.errors import UserError

__all__ = [
    "ADAPTER_OPTIONS",
    "BETA",
    "ETA",
    "LORA_ALPHA",
    "LORA_NORMALIZATION",
    "LORA_RANK",
    "LORA_TARGETS",
    "RHO",
    "RHO_WARMUP",
    "Check",
    "Option",
    "choices",
    "in_interval",
    "non_negative",
    "non_negative_int",
    "option_flag",
    "positive",
    "positive_int",
    "positive_number",
    "regex_list",
]

Check = Callable[[Any, str], None]
"""Validates a value given for an option (``flag`` names it in the message); raises ``UserError``."""

TARGETS = ("rule", "optimizer", "adapters")


@dataclass(frozen=True)
class Option:
    """One method option, declared once.

    ``name`` is the ``RunConfig`` field and ``config.json`` key, and the flag ``--name-with-dashes``
    of ``landscape train`` (:func:`option_flag`: a Python keyword's trailing underscore is dropped,
    ``lambda_`` is ``--lambda``); ``type`` its value type (``float``, ``int`` or ``str``); ``default``
    the value written into ``config.json`` when it is not given (``None``: no value; the rule
    decides, e.g. fSGLD's sigma coupled to beta); ``help`` the flag's help text; ``keyword`` the
    constructor keyword when it differs from ``name``; ``check`` the validation; ``targets``
    where the value goes (``"rule"``, ``"optimizer"``, ``"adapters"``); ``sweep``: the command
    line takes a comma-separated list and runs one training per value (``rho``).
    """

    name: str
    type: type
    help: str
    default: Any = None
    keyword: str | None = None
    check: Check | None = None
    targets: tuple[str, ...] = ("rule",)
    sweep: bool = False

    def __post_init__(self) -> None:
        unknown = set(self.targets) - set(TARGETS)
        if unknown or not self.targets:
            raise ValueError(f"option {self.name!r}: targets must be some of {TARGETS}, got {self.targets}")

    @property
    def flag(self) -> str:
        """The command-line flag, ``--micro-batch`` for ``micro_batch`` (:func:`option_flag`)."""
        return option_flag(self.name)

    @property
    def kwarg(self) -> str:
        """The keyword the targets take it under (``m`` for ``micro_batch``)."""
        return self.keyword or self.name

    def validate(self, value: Any) -> None:
        """Raise ``UserError`` naming the flag when ``value`` (not ``None``) is not acceptable."""
        if value is not None and self.check is not None:
            self.check(value, self.flag)

    def with_default(self, default: Any) -> Option:
        """This option with another default (a rule whose default differs, e.g. ASAM's rho)."""
        return dataclasses.replace(self, default=default)

    def with_targets(self, *targets: str) -> Option:
        """This option going to other targets (``beta``: SGLD's alone, or fSGLD's rule as well)."""
        return dataclasses.replace(self, targets=tuple(targets))

    def same_declaration(self, other: Option) -> bool:
        """Whether ``other`` is this option up to its default and targets (one option, two uses)."""
        return dataclasses.replace(other, default=self.default, targets=self.targets) == self


def option_flag(name: str) -> str:
    """The command-line flag of a configuration field: ``--micro-batch`` for ``micro_batch``.

    A trailing underscore, PEP 8's escape of a Python keyword in a field name, is dropped: the
    field ``lambda_`` is the flag ``--lambda``.
    """
    return "--" + name.removesuffix("_").replace("_", "-")


# ---------------------------------------------------------------------------------- checks
def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def positive_int(value: Any, flag: str) -> None:
    """An integer >= 1."""
    if not _is_int(value) or value < 1:
        raise UserError(f"{flag} must be a positive integer, got {value!r}")


def non_negative_int(value: Any, flag: str) -> None:
    """An integer >= 0."""
    if not _is_int(value) or value < 0:
        raise UserError(f"{flag} must be a non-negative integer, got {value!r}")


def non_negative(value: Any, flag: str) -> None:
    """A finite number >= 0."""
    if not (_is_number(value) and math.isfinite(value) and value >= 0):
        raise UserError(f"{flag} must be non-negative, got {value}")


def positive(value: Any, flag: str) -> None:
    """A number > 0; infinity allowed (SGLD's beta = inf is plain SGD)."""
    if not (_is_number(value) and value > 0):
        raise UserError(f"{flag} must be positive, got {value}")


def positive_number(value: Any, flag: str) -> None:
    """A finite number > 0."""
    if not (_is_number(value) and math.isfinite(value) and value > 0):
        raise UserError(f"{flag} must be a positive number, got {value!r}")


def in_interval(low: float, high: float, *, open_low: bool = False, note: str = "") -> Check:
    """A number in ``[low, high]``, ``(low, high]`` with ``open_low``; ``note`` follows the flag."""
    text = f"{'(' if open_low else '['}{low:g}, {high:g}]"

    def check(value: Any, flag: str) -> None:
        if not _is_number(value):
            raise UserError(f"{flag} must be a number, got {value!r}")
        if not ((low < value if open_low else low <= value) and value <= high):
            raise UserError(f"{flag}{f' ({note})' if note else ''} must be in {text}, got {value!r}")

    return check


def choices(*allowed: str) -> Check:
    """One of ``allowed``."""

    def check(value: Any, flag: str) -> None:
        if value not in allowed:
            raise UserError(f"unknown {flag} '{value}' (choose from {', '.join(allowed)})")

    return check


def regex_list(value: Any, flag: str) -> None:
    """Comma-separated regular expressions, at least one, each one valid."""
    if not isinstance(value, str):
        raise UserError(f"{flag} must be text, got {value!r}")
    patterns = [t.strip() for t in value.split(",") if t.strip()]
    if not patterns:
        raise UserError(f"{flag} is empty; give a regular expression or leave it out")
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise UserError(f"invalid {flag} pattern '{pattern}': {exc}") from None


# ------------------------------------------------------------------------- shared options
RHO = Option("rho", float, "perturbation radius", default=0.05, check=non_negative, sweep=True)
RHO_WARMUP = Option("rho_warmup", int, "linear rho warm-up steps", default=0, check=non_negative_int)
BETA = Option(
    "beta",
    float,
    "inverse temperature of SGLD (inf: no noise)",
    default=1e8,
    check=positive,
    targets=("optimizer",),
)
ETA = Option(
    "eta",
    float,
    "T = |w| + eta (asam); exponent of sigma = beta^-(1+eta)/4 (fsgld)",
    default=0.01,
    check=positive,
)
LORA_NORMALIZATION = Option(
    "lora_normalization",
    str,
    "rho per layer or global",
    default="layer",
    keyword="normalization",
    check=choices("layer", "global"),
)
LORA_RANK = Option(
    "lora_rank", int, "adapter rank r", default=8, keyword="rank", check=positive_int, targets=("adapters",)
)
LORA_ALPHA = Option(
    "lora_alpha",
    float,
    "adapter alpha, scaling alpha/r",
    default=16.0,
    keyword="alpha",
    check=positive_number,
    targets=("adapters",),
)
LORA_TARGETS = Option(
    "lora_targets",
    str,
    "comma-separated regexes of the layers to adapt (e.g. attn) [default: every nn.Linear]",
    keyword="targets",
    check=regex_list,
    targets=("adapters",),
)
ADAPTER_OPTIONS = (LORA_RANK, LORA_ALPHA, LORA_TARGETS)
"""The options of the low-rank adapters themselves (read by ``add_lora``, not by the rule)."""
