"""Sharpness-aware gradient rules, Langevin updates and the m-sharpness diagnostic.

A *gradient rule* forms the training gradient and fills ``p.grad``; a *base optimizer*
(``torch.optim.AdamW``, ``torch.optim.SGD`` or :class:`SGLD`) then steps::

    rule = make_rule("func-sam", rho=0.05)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for x, y in loader:
        loss = rule.compute_gradient(model, x, y, loss_fn="cross_entropy", optimizer=opt)
        opt.step()

:class:`SharpnessAwareOptimizer` packs both into one ``torch.optim``-style object. See
``docs/optimizers.md`` for every method's equation, defaults and cost.
"""

from landscape.optim.base import BatchLoss, GradientRule, PerturbationRule, adam_denominator
from landscape.optim.flat_lora import EFMLoRA, FMLoRA, LoRADiagnostics, LoRAGradient
from landscape.optim.functional_sam import AngleSAM, FunctionalSAM, LogitSAM, PrecondFunctionalSAM
from landscape.optim.langevin import FSGLD, SGLD, fsgld_sigma
from landscape.optim.lora import LoRAFactors, LoRALinear, add_lora, lora_layers, merge_lora
from landscape.optim.rules import RULES, RuleSpec, make_base_optimizer, make_rule
from landscape.optim.sam import ASAM, MSAM, RWSAM, SAM, PlainGradient, PrecondSAM
from landscape.optim.sharpness import m_sharpness
from landscape.optim.wrapper import SharpnessAwareOptimizer

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
    "BatchLoss",
    "FunctionalSAM",
    "GradientRule",
    "LoRADiagnostics",
    "LoRAFactors",
    "LoRAGradient",
    "LoRALinear",
    "LogitSAM",
    "PerturbationRule",
    "PlainGradient",
    "PrecondFunctionalSAM",
    "PrecondSAM",
    "RuleSpec",
    "SharpnessAwareOptimizer",
    "adam_denominator",
    "add_lora",
    "fsgld_sigma",
    "lora_layers",
    "m_sharpness",
    "make_base_optimizer",
    "make_rule",
    "merge_lora",
]
