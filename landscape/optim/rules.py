"""Gradient rules by name: the ``RULES`` registry of rule specs and the ``make_rule`` factory.

A rule forms the training gradient and fills ``p.grad``; a base optimizer then steps::

    rule = make_rule("func-sam", rho=0.05)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss = rule.compute_gradient(model, x, y, loss_fn="cross_entropy", optimizer=opt)
    opt.step()

A :class:`RuleSpec` is the one home of everything said about a rule outside its implementation:
the class that implements it, its options (:class:`landscape.optim.options.Option`: type,
default, help, validation), the base optimizer it is paired with, its cost, its paper, and how
reports show it (label and colour). The run configuration (``RunConfig`` fields and
``config.json`` keys), its validation, the ``landscape train`` flags, :func:`make_rule` and the
report's labels and colours all read these specs. Adding an option to a rule is one entry in its
spec's ``options`` (and the keyword in the rule's constructor); adding a rule is one spec.

This module imports neither torch nor the rule classes (they are imported by :func:`make_rule`),
so that the command line reads the specs without loading torch.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from landscape.optim.options import (
    ADAPTER_OPTIONS,
    BETA,
    ETA,
    LORA_NORMALIZATION,
    RHO,
    RHO_WARMUP,
    Option,
    in_interval,
    non_negative,
    positive_int,
    positive_number,
)

if TYPE_CHECKING:
    import torch
    from torch import Tensor

    from landscape.optim.base import GradientRule

__all__ = ["RETIRED_OPTIONS", "RULES", "RuleSpec", "make_base_optimizer", "make_rule", "run_options"]

SAM_PAPER = "Foret, Kleiner, Mobahi, Neyshabur 2021, ICLR, arXiv 2010.01412"
FUNCTIONAL_SAM_PAPER = "Singh, Mobahi, Agarwala, Dauphin 2025, ICML, arXiv 2502.02407"
FLAT_LORA_PAPER = "Deng, Zhu, Pang, Yang, Fu, Zhang 2025, arXiv 2508.00522"
M_SHARPNESS_PAPER = "Luo, Harandi, Phung, Le 2025, arXiv 2509.18001"
FSGLD_PAPER = "Bruno, Hwang, An, Sabanis, Lim 2025, arXiv 2510.02174"


@dataclass(frozen=True)
class RuleSpec:
    """A registry entry: how to build the rule, its options, and how it is described and shown.

    ``implementation``: ``"module:Class"`` of the rule class, imported on first use; ``fixed``:
    constructor arguments it always gets (the plain rules' ``name``). ``options``: the method
    options (:class:`Option`) it takes, each with this rule's default. ``python_keywords``: further
    constructor keywords that :func:`make_rule` accepts from Python callers but that are no run
    option (a schedule callable, a dtype, ...); ``seed`` is always accepted. ``label``: the
    report's name for it, as the Functional-SAM paper writes it in its tables; ``color``: its
    fixed line colour in every figure (SAM red and the preconditioned Functional-SAM orange, as in
    Functional-SAM Fig. 3; AdamW, the baseline, black); ``description``, ``cost``, ``citation``: what
    the documentation and ``--help`` say; ``base_optimizer``: the optimizer it is paired with.
    """

    name: str
    implementation: str
    label: str
    color: str
    description: str
    cost: str
    base_optimizer: str
    citation: str = ""
    options: tuple[Option, ...] = ()
    python_keywords: tuple[str, ...] = ()
    fixed: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        names = [o.name for o in self.options]
        if len(set(names)) != len(names):
            raise ValueError(f"rule {self.name!r} lists an option twice: {names}")

    @property
    def factory(self) -> Callable[..., GradientRule]:
        """The rule's constructor (the class, with the ``fixed`` arguments bound)."""
        module, _, attribute = self.implementation.partition(":")
        cls = getattr(importlib.import_module(module), attribute)
        if not self.fixed:
            return cls
        fixed = dict(self.fixed)
        return lambda **options: cls(**fixed, **options)

    def option(self, name: str) -> Option | None:
        """The option called ``name`` if this rule takes it."""
        return next((o for o in self.options if o.name == name), None)

    def takes(self, name: str) -> bool:
        """Whether this rule takes the option ``name``."""
        return self.option(name) is not None

    def keywords(self) -> list[str]:
        """What :func:`make_rule` accepts: the rule options' keywords, the Python-only ones, seed."""
        rule_options = [o.kwarg for o in self.options if "rule" in o.targets]
        return [*rule_options, *self.python_keywords, "seed"]


_SCHEDULE = ("rho_schedule",)  # every rho-based rule also takes a schedule callable t -> rho

PHI = Option(
    "phi",
    float,
    "angle between the two paths (0: func-sam, pi/2: logit-sam)",
    default=math.pi / 4,
    check=in_interval(-math.pi, math.pi, note="radians"),
)
MICRO_BATCH = Option("micro_batch", int, "micro-batch size m", default=32, keyword="m", check=positive_int)
GIBBS_LAMBDA = Option(
    "lambda_",
    float,
    "inverse temperature lambda of the Gibbs weights p_i ~ exp(lambda ||grad f_i||) (0: SAM)",
    default=1.0,
    check=non_negative,
)
FD_DELTA = Option(
    "delta",
    float,
    "finite-difference step along the Rademacher direction z of the per-sample gradient norms",
    default=1e-4,
    check=positive_number,
)
EMA_NEW_WEIGHT = Option(
    "ema_new_weight",
    float,
    "the paper's beta, weight of the NEW perturbation in the EMA",
    default=0.99,
    check=in_interval(0.0, 1.0, open_low=True, note="the paper's beta"),
)
SIGMA = Option("sigma", float, "perturbation scale [default: beta^-(1+eta)/4]", check=non_negative)

RULES: dict[str, RuleSpec] = {
    spec.name: spec
    for spec in [
        RuleSpec(
            "sgd",
            "landscape.optim.sam:PlainGradient",
            "SGD",
            "#8c564b",
            "plain gradient g, stepped by SGD",
            "1F+1B",
            "sgd",
            fixed={"name": "sgd"},
        ),
        RuleSpec(
            "adamw",
            "landscape.optim.sam:PlainGradient",
            "AdamW",
            "#222222",
            "plain gradient g, stepped by AdamW",
            "1F+1B",
            "adamw",
            "Loshchilov, Hutter 2019, ICLR, arXiv 1711.05101",
            fixed={"name": "adamw"},
        ),
        RuleSpec(
            "sam",
            "landscape.optim.sam:SAM",
            "SAM",
            "#d62728",
            "SAM: grad L(theta + rho g/||g||)",
            "2F+2B",
            "adamw",
            f"{SAM_PAPER}, Eq. 2 of arXiv 2502.02407",
            options=(RHO, RHO_WARMUP),
            python_keywords=("geometry", "eta", *_SCHEDULE),
        ),
        RuleSpec(
            "asam",
            "landscape.optim.sam:ASAM",
            "ASAM",
            "#e377c2",
            "adaptive SAM: e = rho T^2 g/||T g||, T = |w| + eta on weights",
            "2F+2B",
            "adamw",
            "Kwon, Kim, Park, Choi 2021, ICML, arXiv 2102.11600, Eq. 11",
            options=(RHO.with_default(0.5), ETA, RHO_WARMUP),
            python_keywords=_SCHEDULE,
        ),
        RuleSpec(
            "msam",
            "landscape.optim.sam:MSAM",
            "m-SAM",
            "#bcbd22",
            "m-SAM: one SAM perturbation per micro-batch of m samples, size-weighted mean",
            "2F+2B, B/m sequential",
            "adamw",
            f"{SAM_PAPER}, Sec. 4",
            options=(RHO, MICRO_BATCH, RHO_WARMUP),
            python_keywords=_SCHEDULE,
        ),
        RuleSpec(
            "func-sam",
            "landscape.optim.functional_sam:FunctionalSAM",
            "Functional-SAM",
            "#1f77b4",
            "Functional-SAM: J(theta + rho eps*)^T r(theta)",
            "2F+2B",
            "adamw",
            f"{FUNCTIONAL_SAM_PAPER}, Eq. 11",
            options=(RHO, RHO_WARMUP),
            python_keywords=("geometry", *_SCHEDULE, "residual_dtype"),
        ),
        RuleSpec(
            "logit-sam",
            "landscape.optim.functional_sam:LogitSAM",
            "Logit-SAM",
            "#17becf",
            "LOGIT-SAM: J(theta)^T r(theta + rho eps*)",
            "2F+2B",
            "adamw",
            f"{FUNCTIONAL_SAM_PAPER}, App. D",
            options=(RHO, RHO_WARMUP),
            python_keywords=("geometry", *_SCHEDULE),
        ),
        RuleSpec(
            "angle-sam",
            "landscape.optim.functional_sam:AngleSAM",
            "Angle-SAM",
            "#7f7f7f",
            "ANGLE-SAM: g + sin(phi)(logit path) + cos(phi)(functional path)",
            "2F+3B",
            "adamw",
            f"{FUNCTIONAL_SAM_PAPER}, Eq. 19",
            options=(RHO, PHI, RHO_WARMUP),
            python_keywords=("geometry", *_SCHEDULE, "residual_dtype"),
        ),
        RuleSpec(
            "precond-sam",
            "landscape.optim.sam:PrecondSAM",
            "Precond SAM",
            "#9467bd",
            "preconditioned SAM: grad L(theta + rho M^-1 eps*), M = AdamW's denominator",
            "2F+2B",
            "adamw",
            f"{FUNCTIONAL_SAM_PAPER}, Eq. 12",
            options=(RHO.with_default(0.001), RHO_WARMUP),
            python_keywords=_SCHEDULE,
        ),
        RuleSpec(
            "precond-func-sam",
            "landscape.optim.functional_sam:PrecondFunctionalSAM",
            "Precond Functional-SAM",
            "#ff7f0e",
            "preconditioned Functional-SAM: J(theta + rho M^-1 eps*)^T r(theta)",
            "2F+2B",
            "adamw",
            f"{FUNCTIONAL_SAM_PAPER}, Eqs. 11-12, Sec. 5.2",
            options=(RHO.with_default(0.001), RHO_WARMUP),
            python_keywords=(*_SCHEDULE, "residual_dtype"),
        ),
        RuleSpec(
            "rwsam",
            "landscape.optim.rwsam:RWSAM",
            "RW-SAM",
            "#aa7744",
            "RW-SAM: grad L(theta + rho g_p/||g_p||), g_p = sum_i p_i grad f_i, "
            "p = softmax(lambda |f_i(theta + delta z) - f_i(theta)| / delta), z Rademacher",
            "3F+2B (one F without graph)",
            "adamw",
            f"{M_SHARPNESS_PAPER}, Reweighted SAM",
            options=(RHO, GIBBS_LAMBDA, FD_DELTA, RHO_WARMUP),
            python_keywords=_SCHEDULE,
        ),
        RuleSpec(
            "lora",
            "landscape.optim.flat_lora:LoRAGradient",
            "LoRA",
            "#555599",
            "plain LoRA: the adapters' gradient (W = W0 + s B A, s = alpha/r), stepped by AdamW",
            "1F+1B",
            "adamw",
            "Hu et al. 2022, ICLR, arXiv 2106.09685, Eq. 3",
            options=ADAPTER_OPTIONS,
        ),
        RuleSpec(
            "fmlora",
            "landscape.optim.flat_lora:FMLoRA",
            "FMLoRA",
            "#cc6677",
            "FMLoRA: grad at B + E_B, E_B = (1/s) Ebar_W A^+ from the Eq. 12 full-space estimate",
            "2F+2B + r x r pseudo-inverses per layer",
            "adamw",
            f"{FLAT_LORA_PAPER}, Eqs. 12-15",
            options=(RHO, LORA_NORMALIZATION, RHO_WARMUP, *ADAPTER_OPTIONS),
            python_keywords=_SCHEDULE,
        ),
        RuleSpec(
            "efmlora",
            "landscape.optim.flat_lora:EFMLoRA",
            "EFMLoRA",
            "#117733",
            "EFMLoRA: grad at B + EMA of past E_B, next E_B from the same pass",
            "1F+1B + r x r pseudo-inverses per layer",
            "adamw",
            f"{FLAT_LORA_PAPER}, Sec. Efficient FMLoRA",
            options=(RHO, EMA_NEW_WEIGHT, LORA_NORMALIZATION, RHO_WARMUP, *ADAPTER_OPTIONS),
            python_keywords=_SCHEDULE,
        ),
        RuleSpec(
            "sgld",
            "landscape.optim.sam:PlainGradient",
            "SGLD",
            "#98c379",
            "plain gradient g, stepped by SGLD",
            "1F+1B",
            "sgld",
            "Welling, Teh 2011, ICML",
            options=(BETA,),
            fixed={"name": "sgld"},
        ),
        RuleSpec(
            "fsgld",
            "landscape.optim.langevin:FSGLD",
            "fSGLD",
            "#2ca02c",
            "fSGLD: grad U(theta + e), e ~ N(0, sigma^2 I), sigma = beta^-(1+eta)/4, stepped by SGLD",
            "1F+1B",
            "sgld",
            FSGLD_PAPER,
            options=(SIGMA, BETA.with_targets("rule", "optimizer"), ETA),
        ),
    ]
}
"""Every gradient rule by its method name (the CLI's ``--method``)."""

RETIRED_OPTIONS: dict[str, str] = {
    "temperature": "the Gibbs temperature of the former RW-SAM interpretation, replaced by the "
    "published algorithm (--lambda, --delta)",
}
"""Options that no rule takes any more, by the ``config.json`` key they had: an old configuration
that leaves one unset (``null``) still loads; one that sets it names what became of it."""


def run_options(rules: Iterable[RuleSpec] | None = None) -> list[Option]:
    """Every option some rule takes, once, in the order of first appearance over ``RULES``.

    The returned option carries the first declaration's help, type and check; a rule's own
    default is its spec's (:meth:`RuleSpec.option`). Two declarations of one name must agree up
    to default and targets.
    """
    seen: dict[str, Option] = {}
    for spec in RULES.values() if rules is None else rules:
        for option in spec.options:
            first = seen.setdefault(option.name, option)
            if not first.same_declaration(option):
                raise ValueError(
                    f"option {option.name!r} is declared twice, differently (rule {spec.name!r})"
                )
    return list(seen.values())


def make_rule(name: str, **options: Any) -> GradientRule:
    """Build the rule registered as ``name`` (a CLI method name) with ``options``.

    ``options`` are constructor keywords (``rho``, ``rho_warmup``, ``phi``, ``m``, ``lambda_``, ``delta``,
    ``sigma``, ``beta``, ``eta``, ``normalization``, ``seed``, ``rho_schedule``, ...); those whose
    value is ``None`` are dropped, so a caller may pass all it has. An option the rule does not
    take raises ``TypeError`` naming the ones it does. Omitted options take the constructor's
    defaults.
    """
    if name not in RULES:
        raise ValueError(f"unknown rule {name!r}; choose one of {sorted(RULES)}")
    spec = RULES[name]
    given = {k: v for k, v in options.items() if v is not None}
    accepted = spec.keywords()
    unknown = sorted(set(given) - set(accepted))
    if unknown:
        raise TypeError(f"rule {name!r} does not take {unknown}; it takes {accepted}")
    return spec.factory(**given)


def make_base_optimizer(
    kind: str, params: Iterable[Tensor] | Iterable[dict[str, Any]], **options: Any
) -> torch.optim.Optimizer:
    """A base optimizer by name: ``"sgd"`` (torch.optim.SGD), ``"adamw"`` (torch.optim.AdamW) or
    ``"sgld"`` (:class:`SGLD`); ``options`` go to its constructor (``lr``, ``weight_decay``, ...)."""
    import torch

    from landscape.optim.langevin import SGLD

    classes: dict[str, type[torch.optim.Optimizer]] = {
        "sgd": torch.optim.SGD,
        "adamw": torch.optim.AdamW,
        "sgld": SGLD,
    }
    if kind not in classes:
        raise ValueError(f"unknown base optimizer {kind!r}; choose one of {sorted(classes)}")
    return classes[kind](params, **options)
