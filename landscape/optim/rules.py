"""Gradient rules by name: the ``RULES`` registry and the ``make_rule`` factory used by the CLI.

A rule forms the training gradient and fills ``p.grad``; a base optimizer then steps::

    rule = make_rule("func-sam", rho=0.05)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss = rule.compute_gradient(model, x, y, loss_fn="cross_entropy", optimizer=opt)
    opt.step()

The rule classes live in :mod:`landscape.optim.sam`, :mod:`landscape.optim.functional_sam` and
:mod:`landscape.optim.langevin`; they are re-exported here.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from landscape.optim.base import GradientRule, PerturbationRule
from landscape.optim.flat_lora import EFMLoRA, FMLoRA, LoRAGradient
from landscape.optim.functional_sam import AngleSAM, FunctionalSAM, LogitSAM, PrecondFunctionalSAM
from landscape.optim.langevin import FSGLD, SGLD, fsgld_sigma
from landscape.optim.sam import ASAM, MSAM, RWSAM, SAM, PlainGradient, PrecondSAM

__all__ = [
    "ASAM",
    "EFMLoRA",
    "FMLoRA",
    "FSGLD",
    "MSAM",
    "RULES",
    "RWSAM",
    "SAM",
    "SGLD",
    "AngleSAM",
    "FunctionalSAM",
    "GradientRule",
    "LoRAGradient",
    "LogitSAM",
    "PerturbationRule",
    "PlainGradient",
    "PrecondFunctionalSAM",
    "PrecondSAM",
    "RuleSpec",
    "fsgld_sigma",
    "make_base_optimizer",
    "make_rule",
]


@dataclass(frozen=True)
class RuleSpec:
    """A registry entry: how to build the rule, what it computes, its cost and its base optimizer."""

    name: str
    factory: Callable[..., GradientRule]
    description: str
    cost: str
    base_optimizer: str


def _plain(name: str) -> Callable[..., GradientRule]:
    def build(*, seed: int = 0) -> GradientRule:
        return PlainGradient(name, seed=seed)

    return build


RULES: dict[str, RuleSpec] = {
    spec.name: spec
    for spec in [
        RuleSpec("sgd", _plain("sgd"), "plain gradient g, stepped by SGD", "1F+1B", "sgd"),
        RuleSpec("adamw", _plain("adamw"), "plain gradient g, stepped by AdamW", "1F+1B", "adamw"),
        RuleSpec("sam", SAM, "SAM: grad L(theta + rho g/||g||) (seed 002 Eq. 2)", "2F+2B", "adamw"),
        RuleSpec(
            "asam", ASAM, "adaptive SAM: e = rho T^2 g/||T g||, T = |w| + eta on weights", "2F+2B", "adamw"
        ),
        RuleSpec(
            "msam",
            MSAM,
            "m-SAM: one SAM perturbation per micro-batch of m samples, size-weighted mean",
            "2F+2B, B/m sequential",
            "adamw",
        ),
        RuleSpec(
            "func-sam",
            FunctionalSAM,
            "Functional-SAM: J(theta + rho eps*)^T r(theta) (seed 002 Eq. 11)",
            "2F+2B",
            "adamw",
        ),
        RuleSpec(
            "logit-sam",
            LogitSAM,
            "LOGIT-SAM: J(theta)^T r(theta + rho eps*) (seed 002 App. D)",
            "2F+2B",
            "adamw",
        ),
        RuleSpec(
            "angle-sam",
            AngleSAM,
            "ANGLE-SAM: g + sin(phi)(logit path) + cos(phi)(functional path) (seed 002 Eq. 19)",
            "2F+3B",
            "adamw",
        ),
        RuleSpec(
            "precond-sam",
            PrecondSAM,
            "preconditioned SAM: grad L(theta + rho M^-1 eps*), M = AdamW's denominator (seed 002 Eq. 12)",
            "2F+2B",
            "adamw",
        ),
        RuleSpec(
            "precond-func-sam",
            PrecondFunctionalSAM,
            "preconditioned Functional-SAM: J(theta + rho M^-1 eps*)^T r(theta) (seed 002 Sec. 5.2)",
            "2F+2B",
            "adamw",
        ),
        RuleSpec(
            "rwsam",
            RWSAM,
            "reweighted SAM (our interpretation of seed 003): Gibbs weights B softmax(s/T) on per-sample "
            "finite-difference sharpness, gradient of the reweighted loss at the SAM point",
            "2F+2B",
            "adamw",
        ),
        RuleSpec(
            "lora",
            LoRAGradient,
            "plain LoRA: the adapters' gradient (W = W0 + s B A, s = alpha/r), stepped by AdamW",
            "1F+1B",
            "adamw",
        ),
        RuleSpec(
            "fmlora",
            FMLoRA,
            "FMLoRA: grad at B + E_B, E_B = (1/s) Ebar_W A^+ from the Eq. 12 full-space estimate "
            "(seed 001 Eqs. 12-15)",
            "2F+2B + r x r pseudo-inverses per layer",
            "adamw",
        ),
        RuleSpec(
            "efmlora",
            EFMLoRA,
            "EFMLoRA: grad at B + EMA of past E_B, next E_B from the same pass (seed 001)",
            "1F+1B + r x r pseudo-inverses per layer",
            "adamw",
        ),
        RuleSpec(
            "sgld", _plain("sgld"), "plain gradient g, stepped by SGLD (Welling & Teh 2011)", "1F+1B", "sgld"
        ),
        RuleSpec(
            "fsgld",
            FSGLD,
            "fSGLD: grad U(theta + e), e ~ N(0, sigma^2 I), sigma = beta^-(1+eta)/4, stepped by SGLD "
            "(seed 000)",
            "1F+1B",
            "sgld",
        ),
    ]
}


def make_rule(name: str, **options: Any) -> GradientRule:
    """Build the rule registered as ``name`` (a CLI method name) with ``options``.

    Options whose value is ``None`` are dropped, so a CLI can pass all its flags (``rho``,
    ``rho_warmup``, ``phi``, ``m``, ``temperature``, ``sigma``, ``beta``, ``eta``, ``seed``, ...);
    an option the rule does not take raises ``TypeError`` naming the ones it does.
    """
    if name not in RULES:
        raise ValueError(f"unknown rule {name!r}; choose one of {sorted(RULES)}")
    factory = RULES[name].factory
    given = {k: v for k, v in options.items() if v is not None}
    accepted = [
        p.name
        for p in inspect.signature(factory).parameters.values()
        if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name != "name"
    ]
    unknown = sorted(set(given) - set(accepted))
    if unknown:
        raise TypeError(f"rule {name!r} does not take {unknown}; it takes {accepted}")
    return factory(**given)


def make_base_optimizer(
    kind: str, params: Iterable[Tensor] | Iterable[dict[str, Any]], **options: Any
) -> torch.optim.Optimizer:
    """A base optimizer by name: ``"sgd"`` (torch.optim.SGD), ``"adamw"`` (torch.optim.AdamW) or
    ``"sgld"`` (:class:`SGLD`); ``options`` go to its constructor (``lr``, ``weight_decay``, ...)."""
    classes: dict[str, type[torch.optim.Optimizer]] = {
        "sgd": torch.optim.SGD,
        "adamw": torch.optim.AdamW,
        "sgld": SGLD,
    }
    if kind not in classes:
        raise ValueError(f"unknown base optimizer {kind!r}; choose one of {sorted(classes)}")
    return classes[kind](params, **options)
