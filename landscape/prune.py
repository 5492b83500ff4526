"""One-shot global magnitude pruning of a checkpoint (Functional-SAM: Singh, Mobahi, Agarwala &
Dauphin, ICML 2025, Fig. 5).

For each sparsity s the ``k = round(s * n)`` weights of smallest magnitude ``|w|`` among all ``n``
prunable weights of the model (one global ranking, not per layer) are set to zero, with no
retraining, and the loss on the evaluation data is measured. Sharpness-aware training is expected
to degrade more gracefully as s grows (Functional-SAM Sec. 5.5, Fig. 5; Na, Mehta & Strubell 2022,
"Train Flat, Then Compress").

Which tensors count: the paper prunes *weights*. Here those are the parameters with two or more
dimensions: linear and convolution kernels, token and position embeddings and the output head.
Biases and LayerNorm/BatchNorm gains and shifts (one-dimensional) are kept, as in the usual
global-magnitude-pruning setups (e.g. ``torch.nn.utils.prune.global_unstructured`` applied to the
``weight`` tensors of linear/conv layers). ``include_all=True`` ranks every parameter instead.
Ties at the threshold are broken by position, so exactly k entries are zeroed.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from landscape.data import Dataset
from landscape.errors import UserError
from landscape.evaluation import evaluate

__all__ = ["PruneResult", "global_magnitude_masks", "parse_sparsities", "prunable_parameters", "prune_eval"]


@dataclass(frozen=True)
class PruneResult:
    """Evaluation of the model with a fraction ``sparsity`` of its prunable weights set to zero."""

    sparsity: float
    num_pruned: int
    num_prunable: int
    threshold: float
    eval_loss: float
    eval_accuracy: float | None

    def to_dict(self) -> dict[str, float | int | None]:
        """A JSON-ready dict."""
        return asdict(self)


def parse_sparsities(text: str | Sequence[float]) -> list[float]:
    """``"0.1,0.2"`` (or a list) -> sorted distinct sparsities in [0, 1), with 0 (dense) added."""
    items = [s.strip() for s in text.split(",") if s.strip()] if isinstance(text, str) else list(text)
    values = []
    for item in items:
        try:
            value = float(item)
        except (TypeError, ValueError):
            raise UserError(f"sparsity '{item}' is not a number") from None
        if not 0.0 <= value < 1.0:
            raise UserError(f"sparsity must be in [0, 1), got {item}")
        values.append(value)
    if not values:
        raise UserError("--sparsity is empty: give comma-separated fractions such as 0.1,0.2,0.5")
    return sorted({0.0, *values})


def prunable_parameters(model: nn.Module, include_all: bool = False) -> list[tuple[str, nn.Parameter]]:
    """The ``(name, parameter)`` pairs ranked by pruning: those with ``dim >= 2`` (see the module
    docstring), or every parameter with ``include_all``."""
    chosen = [(n, p) for n, p in model.named_parameters() if include_all or p.dim() >= 2]
    if not chosen:
        raise UserError(
            "the model has no weight matrices to prune (use include_all to prune every parameter)"
        )
    return chosen


def global_magnitude_masks(tensors: Sequence[Tensor], sparsity: float) -> tuple[list[Tensor], float]:
    """Keep-masks zeroing the ``round(sparsity * n)`` smallest ``|w|`` over all ``tensors`` jointly.

    Returns the boolean masks (True = keep) and the largest pruned magnitude (0 when none).
    """
    flat = torch.cat([t.detach().reshape(-1).abs().double() for t in tensors])
    n = flat.numel()
    k = min(int(round(sparsity * n)), n)
    keep = torch.ones(n, dtype=torch.bool)
    threshold = 0.0
    if k > 0:
        # a stable sort breaks ties by position, so exactly k entries go
        order = torch.sort(flat, stable=True).indices[:k]
        keep[order] = False
        threshold = float(flat[order[-1]])
    masks = []
    offset = 0
    for t in tensors:
        masks.append(keep[offset : offset + t.numel()].view(t.shape))
        offset += t.numel()
    return masks, threshold


def prune_eval(
    model: nn.Module,
    data: Dataset,
    loss: str,
    sparsities: Sequence[float],
    *,
    include_all: bool = False,
    device: str | torch.device | None = None,
) -> list[PruneResult]:
    """Evaluate ``model`` on ``data`` after one-shot global magnitude pruning at each sparsity.

    Each sparsity starts from the original weights; the model's weights are restored bit for bit
    at the end (also on error), and its modes, flags and the global RNG are left alone.
    ``device``: where to evaluate (``"auto"``, ``"cpu"``, ``"cuda:N"``, ...; see
    :func:`landscape.distributed.resolve_device`): a copy of the model is made there, the
    caller's model stays where it is. Default: where the model is.
    """
    if device is not None:
        from landscape.distributed import resolve_device

        target = resolve_device(device)
        current = next((p.device for p in model.parameters()), target)
        if target != current:
            model = copy.deepcopy(model).to(target)
    chosen = prunable_parameters(model, include_all)
    originals = [p.detach().clone() for _, p in chosen]
    results = []
    try:
        for sparsity in sparsities:
            masks, threshold = global_magnitude_masks(originals, float(sparsity))
            with torch.no_grad():
                for (_, p), original, mask in zip(chosen, originals, masks, strict=True):
                    p.copy_(original * mask.to(original.dtype))
            evaluation = evaluate(model, data, loss)
            pruned = int(sum(int((~m).sum()) for m in masks))
            results.append(
                PruneResult(
                    sparsity=float(sparsity),
                    num_pruned=pruned,
                    num_prunable=int(sum(o.numel() for o in originals)),
                    threshold=threshold,
                    eval_loss=evaluation.loss,
                    eval_accuracy=evaluation.accuracy,
                )
            )
    finally:
        with torch.no_grad():
            for (_, p), original in zip(chosen, originals, strict=True):
                p.copy_(original)
    return results
