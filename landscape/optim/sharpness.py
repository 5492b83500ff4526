"""The m-sharpness diagnostic: SAM's sharpness measured with micro-batches of m samples.

For a batch cut into consecutive micro-batches c of n_c samples (the last may be smaller),

    S_m = sum_c (n_c / B) [L_c(theta + rho eps_c) - L_c(theta)],   eps_c = g_c / ||g_c||,

with ``g_c = grad L_c(theta)``: the quantity whose dependence on m Luo, Harandi, Phung, Le (2025,
arXiv 2509.18001) explain, and m-SAM (Foret et al. 2021, Sec. 4) minimises. To first order
``L_c(theta + rho eps_c) - L_c(theta) = rho ||g_c||``, so S_m grows as m shrinks (smaller
micro-batches have noisier, longer gradients).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from landscape.losses import LossLike, as_loss, batch_size
from landscape.models import unwrap_output
from landscape.optim.noise import RngState
from landscape.optim.norm_statistics import frozen_norm_statistics
from landscape.optim.step import slice_batch, trained_parameters
from landscape.optim.tensors import global_norm, perturb_, restore_, scaled


def m_sharpness(
    model: nn.Module,
    inputs: Any,
    targets: Any,
    loss_fn: LossLike,
    rho: float,
    m_values: Sequence[int],
) -> dict[int, float]:
    """SAM sharpness ``S_m`` (module docstring) for each micro-batch size m in ``m_values``.

    The model is left exactly as it was: parameters restored bit for bit, BatchNorm running
    statistics untouched, ``.grad`` untouched and the global RNG state put back (each micro-batch
    replays its own dropout masks in the perturbed pass). ``m >= B`` is full-batch SAM sharpness.
    Micro-batches without counted targets (cross-entropy, all ``-100``) are left out and B counts
    only the others. Cost per m: B/m micro-batches of 2 forward + 1 backward.
    """
    if rho < 0:
        raise ValueError(f"rho must be non-negative, got {rho}")
    loss = as_loss(loss_fn)
    named = trained_parameters(model)
    params = [p for _, p in named]
    total = batch_size(targets)
    outer_rng = RngState(params[0].device)
    result: dict[int, float] = {}
    try:
        with frozen_norm_statistics(model):
            for m in m_values:
                if m < 1:
                    raise ValueError(f"micro-batch sizes must be >= 1, got {m}")
                weighted_sum, counted = 0.0, 0
                for start in range(0, total, m):
                    stop = min(start + m, total)
                    chunk_inputs = slice_batch(inputs, start, stop)
                    chunk_targets = slice_batch(targets, start, stop)
                    if not bool(loss.sample_has_targets(chunk_targets).any()):
                        continue
                    rng = RngState(params[0].device)
                    with torch.enable_grad():
                        clean = loss(unwrap_output(model(chunk_inputs)), chunk_targets)
                        grads = torch.autograd.grad(clean, params, allow_unused=True)
                    eps = scaled(grads, rho / global_norm(grads).clamp_min(torch.finfo(torch.float64).tiny))
                    saved = perturb_(params, eps)
                    try:
                        rng.restore()
                        with torch.no_grad():
                            perturbed = loss(unwrap_output(model(chunk_inputs)), chunk_targets)
                    finally:
                        restore_(params, saved)
                    weighted_sum += (stop - start) * float(perturbed - clean.detach())
                    counted += stop - start
                if counted == 0:
                    raise ValueError("no micro-batch has a counted target")
                result[int(m)] = weighted_sum / counted
    finally:
        outer_rng.restore()
    return result
