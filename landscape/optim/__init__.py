"""Sharpness-aware gradient rules, Langevin updates and the m-sharpness diagnostic.

A *gradient rule* forms the training gradient and fills ``p.grad``; a *base optimizer*
(``torch.optim.AdamW``, ``torch.optim.SGD`` or :class:`SGLD`) then steps::

    rule = make_rule("func-sam", rho=0.05)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for x, y in loader:
        loss = rule.compute_gradient(model, x, y, loss_fn="cross_entropy", optimizer=opt)
        opt.step()

:class:`SharpnessAwareOptimizer` packs both into one ``torch.optim`` optimizer: ``step(closure)``
(every rule; the closure is called once per pass), ``step(inputs=, targets=)``, or
``compute_gradient(...)`` then ``step()``; its ``param_groups`` are the base optimizer's. See
``docs/optimizers.md`` for every method's equation, defaults and cost, and the closure protocol.

The package, by idea:

* :mod:`~landscape.optim.rules` (``RULES``, ``RuleSpec``, ``make_rule``) and
  :mod:`~landscape.optim.options` (``Option``): what each rule is called, takes and is shown as;
  neither imports torch;
* :mod:`~landscape.optim.base`: the rule base classes ``GradientRule`` and ``PerturbationRule``;
  :mod:`~landscape.optim.step`: ``Step``, the one argument of a rule's hook;
  :mod:`~landscape.optim.closure`: how a closure reaches the rules that need the model outputs;
* the rules: :mod:`~landscape.optim.sam`, :mod:`~landscape.optim.rwsam`, :mod:`~landscape.optim.functional_sam`,
  :mod:`~landscape.optim.flat_lora` (with the adapters of :mod:`~landscape.optim.lora`),
  :mod:`~landscape.optim.langevin`; the diagnostic :mod:`~landscape.optim.sharpness`;
  the wrapper :mod:`~landscape.optim.wrapper`;
* the machinery they share: :mod:`~landscape.optim.tensors` (tensor-list maths),
  :mod:`~landscape.optim.noise` (RNG snapshots, seeded generators, Gaussian noise),
  :mod:`~landscape.optim.norm_statistics` (the BatchNorm guard), :mod:`~landscape.optim.parallel`
  (data-parallel averaging); the losses live one floor below, in :mod:`landscape.losses`.

The names below are imported on first use, so ``import landscape.optim.rules`` stays free of torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from landscape.losses import as_loss as BatchLoss  # noqa: N812
    from landscape.optim.base import GradientRule, PerturbationRule, adam_denominator
    from landscape.optim.flat_lora import EFMLoRA, FMLoRA, LoRADiagnostics, LoRAGradient
    from landscape.optim.functional_sam import AngleSAM, FunctionalSAM, LogitSAM, PrecondFunctionalSAM
    from landscape.optim.langevin import FSGLD, SGLD, fsgld_sigma
    from landscape.optim.lora import LoRAFactors, LoRALinear, add_lora, lora_layers, merge_lora
    from landscape.optim.options import Option
    from landscape.optim.rules import RULES, RuleSpec, make_base_optimizer, make_rule
    from landscape.optim.rwsam import RWSAM
    from landscape.optim.sam import ASAM, MSAM, SAM, PlainGradient, PrecondSAM
    from landscape.optim.sharpness import m_sharpness
    from landscape.optim.step import Step
    from landscape.optim.wrapper import SharpnessAwareOptimizer

_LAZY = {
    "ASAM": "landscape.optim.sam",
    "EFMLoRA": "landscape.optim.flat_lora",
    "FMLoRA": "landscape.optim.flat_lora",
    "FSGLD": "landscape.optim.langevin",
    "MSAM": "landscape.optim.sam",
    "RULES": "landscape.optim.rules",
    "RWSAM": "landscape.optim.rwsam",
    "SAM": "landscape.optim.sam",
    "SGLD": "landscape.optim.langevin",
    "AngleSAM": "landscape.optim.functional_sam",
    "FunctionalSAM": "landscape.optim.functional_sam",
    "GradientRule": "landscape.optim.base",
    "LoRADiagnostics": "landscape.optim.flat_lora",
    "LoRAFactors": "landscape.optim.lora",
    "LoRAGradient": "landscape.optim.flat_lora",
    "LoRALinear": "landscape.optim.lora",
    "LogitSAM": "landscape.optim.functional_sam",
    "Option": "landscape.optim.options",
    "PerturbationRule": "landscape.optim.base",
    "PlainGradient": "landscape.optim.sam",
    "PrecondFunctionalSAM": "landscape.optim.functional_sam",
    "PrecondSAM": "landscape.optim.sam",
    "RuleSpec": "landscape.optim.rules",
    "SharpnessAwareOptimizer": "landscape.optim.wrapper",
    "Step": "landscape.optim.step",
    "adam_denominator": "landscape.optim.base",
    "add_lora": "landscape.optim.lora",
    "fsgld_sigma": "landscape.optim.langevin",
    "lora_layers": "landscape.optim.lora",
    "m_sharpness": "landscape.optim.sharpness",
    "make_base_optimizer": "landscape.optim.rules",
    "make_rule": "landscape.optim.rules",
    "merge_lora": "landscape.optim.lora",
}
_RENAMED = {"BatchLoss": ("landscape.losses", "as_loss")}
"""Former names: ``BatchLoss(loss_fn)`` is now :func:`landscape.losses.as_loss`."""


def __getattr__(name: str) -> Any:
    import importlib

    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if name in _RENAMED:
        module, attribute = _RENAMED[name]
        return getattr(importlib.import_module(module), attribute)
    raise AttributeError(f"module 'landscape.optim' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "ASAM",
    "AngleSAM",
    "BatchLoss",
    "EFMLoRA",
    "FMLoRA",
    "FSGLD",
    "FunctionalSAM",
    "GradientRule",
    "LoRADiagnostics",
    "LoRAFactors",
    "LoRAGradient",
    "LoRALinear",
    "LogitSAM",
    "MSAM",
    "Option",
    "PerturbationRule",
    "PlainGradient",
    "PrecondFunctionalSAM",
    "PrecondSAM",
    "RULES",
    "RWSAM",
    "RuleSpec",
    "SAM",
    "SGLD",
    "SharpnessAwareOptimizer",
    "Step",
    "adam_denominator",
    "add_lora",
    "fsgld_sigma",
    "lora_layers",
    "m_sharpness",
    "make_base_optimizer",
    "make_rule",
    "merge_lora",
]
