"""Low-rank adapters (LoRA): a built-in ``nn.Linear`` wrapper and one view of built-in and peft layers.

LoRA (Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models", ICLR 2022, Eq. 3) keeps a
pre-trained weight ``W0`` (out x in) frozen and trains a low-rank update,

    W = W0 + s B A,    A in R^{r x in},  B in R^{out x r},  s = alpha / r,

so a layer computes ``y = x W0^T + b + s (x A^T) B^T``. B starts at zero (so W = W0 at the start)
and A from PyTorch's default Kaiming-uniform ``nn.Linear`` initialisation with ``a = sqrt(5)``,
which is what peft does (``init_lora_weights=True``).

Two sources of LoRA layers are understood, with the same (out x in) convention:

* the built-in :class:`LoRALinear`, added by :func:`add_lora` to the ``nn.Linear`` layers of any
  model (parameters ``<layer>.lora_A`` [r x in] and ``<layer>.lora_B`` [out x r], float
  attribute ``scaling``; the base ``weight``/``bias`` keep their names, so a checkpoint of the
  model without LoRA still loads with ``strict=False``);
* peft's ``LoraLayer`` (``lora_A[adapter]`` and ``lora_B[adapter]`` are ``nn.Linear`` modules,
  ``scaling[adapter]`` a float). peft always stores ``lora_A.weight`` as [r x in] and
  ``lora_B.weight`` as [out x r]; ``fan_in_fan_out=True`` (GPT-2's ``Conv1D``) only means that
  the *base* weight is stored transposed, [in x out]. :meth:`LoRAFactors.base_weight` undoes that.

:func:`lora_layers` returns a :class:`LoRAFactors` view of every LoRA layer of either kind; the
FMLoRA/EFMLoRA rules (:mod:`landscape.optim.flat_lora`) work on these views only. peft is never
imported here: its layers are recognised by their attributes.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from landscape.errors import UserError

__all__ = ["LoRAFactors", "LoRALinear", "add_lora", "lora_layers", "merge_lora"]


class LoRALinear(nn.Linear):
    """An ``nn.Linear`` with a LoRA update: ``y = x W0^T + b + s (dropout(x) A^T) B^T``.

    Built from an existing layer, whose ``weight`` and ``bias`` parameters it takes over (the
    same tensors, not copies). ``lora_A`` [r x in] is Kaiming-uniform initialised (``a = sqrt(5)``,
    i.e. uniform in +-1/sqrt(in), as peft does) and ``lora_B`` [out x r] is zero, so the layer
    starts out computing exactly what the base layer computed. ``scaling = alpha / rank``.
    ``dropout`` acts on the input of the LoRA branch only, as in peft.
    """

    def __init__(
        self,
        base: nn.Linear,
        rank: int = 8,
        alpha: float = 16.0,
        dropout: float = 0.0,
        *,
        generator: torch.Generator | None = None,
    ) -> None:
        # nn.Linear.__init__ would allocate and initialise a fresh weight that is thrown away at once;
        # the attributes it sets are set here from the base layer instead.
        nn.Module.__init__(self)
        self.in_features = base.in_features
        self.out_features = base.out_features
        self.weight = base.weight
        if base.bias is None:
            self.register_parameter("bias", None)
        else:
            self.bias = base.bias
        self.rank = int(rank)
        self.alpha = float(alpha)
        self.scaling = self.alpha / self.rank
        factory = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Parameter(torch.empty(self.rank, self.in_features, **factory))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, self.rank, **factory))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5), generator=generator)
        self.lora_dropout: nn.Module = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        """``x W0^T + b + s (dropout(x) A^T) B^T`` for ``x`` of shape ``[..., in]``."""
        out = F.linear(x, self.weight, self.bias)
        return out + self.scaling * F.linear(F.linear(self.lora_dropout(x), self.lora_A), self.lora_B)

    def merged_weight(self) -> Tensor:
        """``W0 + s B A`` (out x in), detached."""
        return (self.weight + self.scaling * (self.lora_B @ self.lora_A)).detach()

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}, alpha={self.alpha:g}, scaling={self.scaling:g}"


@dataclass(frozen=True, eq=False)
class LoRAFactors:
    """One LoRA layer seen as ``W = W0 + s B A`` in the (out x in) convention.

    ``name`` is the module's path (``"blocks.0.attn.qkv"``), with ``":<adapter>"`` appended for a
    peft adapter. ``A`` [r x in] and ``B`` [out x r] are the trained parameters themselves.
    """

    name: str
    module: nn.Module
    A: nn.Parameter
    B: nn.Parameter
    adapter: str | None = None

    @property
    def scaling(self) -> float:
        """s, read from the layer on each access (peft's ``set_scale`` may change it)."""
        if self.adapter is None:
            return float(self.module.scaling)
        return float(self.module.scaling[self.adapter])

    @property
    def rank(self) -> int:
        """r, the number of rows of A."""
        return self.A.shape[0]

    def base_weight(self) -> Tensor:
        """``W0`` as (out x in), detached; for GPT-2's ``Conv1D`` (peft ``fan_in_fan_out``) transposed."""
        if self.adapter is None:
            return self.module.weight.detach()
        base = self.module.get_base_layer()
        weight = base.weight.detach()
        return weight.T if getattr(self.module, "fan_in_fan_out", False) else weight

    def delta_weight(self) -> Tensor:
        """``s B A`` (out x in), detached."""
        return (self.scaling * (self.B @ self.A)).detach()


def _is_peft_lora(module: nn.Module) -> bool:
    # peft's LoraLayer, recognised without importing peft: ModuleDicts lora_A/lora_B and a dict scaling
    return (
        isinstance(getattr(module, "lora_A", None), nn.ModuleDict)
        and isinstance(getattr(module, "lora_B", None), nn.ModuleDict)
        and isinstance(getattr(module, "scaling", None), dict)
    )


def _peft_adapters(module: nn.Module) -> list[str]:
    if getattr(module, "merged", False) or getattr(module, "disable_adapters", False):
        # merged: the update lives inside W0 and the branch is off; disabled: the branch is off
        return []
    active = getattr(module, "active_adapters", None) or getattr(module, "active_adapter", [])
    if isinstance(active, str):
        active = [active]
    return [a for a in active if a in module.lora_A and a in module.lora_B]


def lora_layers(model: nn.Module, *, trainable_only: bool = False) -> list[LoRAFactors]:
    """Every LoRA layer of ``model``: built-in :class:`LoRALinear` and peft ``LoraLayer`` adapters.

    For peft, each *active* adapter of a layer whose ``lora_A``/``lora_B`` are ``nn.Linear`` gives one
    entry (peft's Linear and GPT-2 ``Conv1D`` layers). Merged or disabled adapters, DoRA adapters
    (their update is not ``s B A``), and peft's embedding and convolution LoRA are left out: their
    parameters are trained as ordinary parameters by the LoRA rules. ``trainable_only`` keeps only
    the layers whose A and B both have ``requires_grad``.
    """
    found: list[LoRAFactors] = []
    for name, module in model.named_modules():
        if isinstance(module, LoRALinear):
            found.append(LoRAFactors(name, module, module.lora_A, module.lora_B))
        elif _is_peft_lora(module):
            use_dora = getattr(module, "use_dora", {}) or {}
            for adapter in _peft_adapters(module):
                lin_a, lin_b = module.lora_A[adapter], module.lora_B[adapter]
                if not (isinstance(lin_a, nn.Linear) and isinstance(lin_b, nn.Linear)):
                    continue
                if use_dora.get(adapter, False):
                    continue
                found.append(LoRAFactors(f"{name}:{adapter}", module, lin_a.weight, lin_b.weight, adapter))
    if trainable_only:
        found = [f for f in found if f.A.requires_grad and f.B.requires_grad]
    return found


def _compile_targets(targets: str | Sequence[str] | None) -> list[re.Pattern[str]] | None:
    if targets is None:
        return None
    patterns = [p.strip() for p in targets.split(",")] if isinstance(targets, str) else list(targets)
    patterns = [p for p in patterns if p]
    if not patterns:
        raise UserError(
            "LoRA targets are empty; give a regular expression or leave them out for all nn.Linear"
        )
    try:
        return [re.compile(p) for p in patterns]
    except re.error as exc:
        raise UserError(f"invalid LoRA target pattern {targets!r}: {exc}") from None


def add_lora(
    model: nn.Module,
    rank: int = 8,
    alpha: float = 16.0,
    targets: str | Sequence[str] | None = None,
    dropout: float = 0.0,
    *,
    freeze_base: bool = True,
    generator: torch.Generator | None = None,
) -> list[str]:
    """Wrap the matching ``nn.Linear`` layers of ``model`` in :class:`LoRALinear`, in place.

    Args:
        model: any module; it is changed in place (like peft's ``get_peft_model``).
        rank: r >= 1, at most min(in, out) of every target layer (otherwise A cannot have full row
            rank and ``cond(A)`` is infinite).
        alpha: the LoRA alpha; the update is scaled by ``s = alpha / rank`` (default 16 with r = 8
            gives s = 2, the setting of the FMLoRA paper, arXiv 2508.00522).
        targets: comma-separated regular expressions (or a list of them) searched in the module
            path (``"attn"``, ``"qkv|proj"``, ``"blocks\\.1\\."``), as ``--params`` does for parameter
            names; ``None`` wraps every ``nn.Linear``.
        dropout: dropout probability on the LoRA branch's input.
        freeze_base: set ``requires_grad=False`` on every parameter of ``model`` that is not a LoRA
            factor, so that only the adapters train (what peft does).
        generator: random stream for A's initialisation (default: the global one).

    Returns the paths of the wrapped layers. Raises :class:`UserError` if nothing matches.
    """
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise UserError(f"LoRA rank must be a positive integer, got {rank!r}")
    if not (isinstance(alpha, int | float) and math.isfinite(alpha) and alpha > 0):
        raise UserError(f"LoRA alpha must be a positive number, got {alpha!r}")
    if not 0.0 <= float(dropout) < 1.0:
        raise UserError(f"LoRA dropout must be in [0, 1), got {dropout!r}")
    regexes = _compile_targets(targets)
    chosen = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear)
        and not isinstance(module, LoRALinear)
        and name
        and (regexes is None or any(r.search(name) for r in regexes))
    ]
    if not chosen:
        linear = [
            n for n, m in model.named_modules() if isinstance(m, nn.Linear) and not isinstance(m, LoRALinear)
        ]
        hint = (
            f"; the nn.Linear layers are {', '.join(linear[:8])}" if linear else "; it has no nn.Linear layer"
        )
        raise UserError(f"LoRA targets {targets!r} match no nn.Linear layer of the model{hint}")
    for name, module in chosen:
        if rank > min(module.in_features, module.out_features):
            raise UserError(
                f"LoRA rank {rank} exceeds min(in, out) = {min(module.in_features, module.out_features)} "
                f"of layer {name!r}; lower --lora-rank or narrow --lora-targets"
            )
    for name, module in chosen:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, LoRALinear(module, rank, alpha, dropout, generator=generator))
    if freeze_base:
        factors = {id(t) for layer in lora_layers(model) for t in (layer.A, layer.B)}
        for p in model.parameters():
            p.requires_grad_(id(p) in factors)
    return [name for name, _ in chosen]


def merge_lora(model: nn.Module) -> list[str]:
    """Replace every built-in :class:`LoRALinear` of ``model`` by a plain ``nn.Linear`` with
    ``W = W0 + s B A``, in place; returns the merged layers' paths.

    The merged weight keeps the base weight's ``requires_grad`` (frozen after :func:`add_lora`; call
    ``model.requires_grad_(True)`` to train or analyse every weight again); the bias is the same
    tensor. For peft models use peft's own ``merge_and_unload()``.
    """
    merged: list[str] = []
    for name, module in list(model.named_modules()):
        if not isinstance(module, LoRALinear):
            continue
        plain = nn.Linear(
            module.in_features,
            module.out_features,
            bias=module.bias is not None,
            device="meta",
        )
        plain.weight = nn.Parameter(module.merged_weight(), requires_grad=module.weight.requires_grad)
        if module.bias is not None:
            plain.bias = module.bias
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, plain)
        merged.append(name)
    return merged
