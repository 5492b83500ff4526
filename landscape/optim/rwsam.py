"""Reweighted SAM (RW-SAM): SAM's perturbation from per-sample gradients weighted by their norms.

Luo, Harandi, Phung, Le, "Unveiling m-Sharpness Through the Structure of Stochastic Gradient
Noise" (NeurIPS 2025, arXiv 2509.18001). m-SAM with small micro-batches generalises better because
the stochastic gradient noise inside its perturbations regularises the variance of the per-sample
gradients; RW-SAM keeps one perturbation for the whole batch (so it stays parallel) and moves it
towards the samples with large gradients. With ``f_i`` the loss of sample i of the batch:

1. Gibbs weights from the per-sample gradient norms (the solution of
   ``max_{P in simplex} sum_i p_i ||grad f_i|| + H(P) / lambda``, H the entropy)::

       p_i = exp(lambda ||grad f_i||) / sum_j exp(lambda ||grad f_j||);

2. the norms from one extra forward pass, a finite difference along a Rademacher vector z
   (entries +-1, one z for the whole batch)::

       ||grad f_i|| ~ s_i = |f_i(theta + delta z) - f_i(theta)| / delta;

3. the perturbation from the weighted gradient, and the update gradient there::

       eps = rho g_p / ||g_p||,   g_p = sum_i p_i grad f_i(theta),
       g = grad L_B(theta + eps).

What ``s_i`` estimates: ``s_i -> |<grad f_i, z>|`` as delta -> 0 (forward-difference error
``(delta / 2) z^T H_i z``, whose mean over z is ``(delta / 2) tr(H_i)``). Over Rademacher z,
``E[<g, z>^2] = ||g||^2`` exactly, but ``E|<g, z>|`` is not ``||g||``: it lies between
``||g|| / sqrt(2)`` and ``||g||`` (Khintchine's inequality with Szarek's constant) and is close to
``sqrt(2/pi) ||g|| ~ 0.80 ||g||`` for a gradient spread over many coordinates (the central limit
theorem), with a relative spread of about ``sqrt(pi/2 - 1) ~ 0.76`` per draw. A common factor c
of all s_i acts as ``lambda c`` in the softmax, so in expectation the weights are those of the
exact norms at about 0.8 lambda; the draw-to-draw noise is the price of one forward pass.

The choices this module makes where the readable text of the paper is silent (each documented in
``docs/optimizers.md``):

* ``f_i`` is sample i's mean loss over its counted targets (a sequence's tokens; ignored targets
  do not count; a sample with no counted target gets ``p_i = 0``);
* the second (update) gradient is the plain batch gradient of the project's batch loss (the mean
  over counted targets, which is the paper's ``(1/|B|) sum_i f_i`` when every sample counts the same
  number of targets): the weights shape the inner maximisation only, the minimised loss stays the
  empirical risk. With ``lambda = 0`` the weights are uniform and RW-SAM is SAM (exactly, when the
  samples count equally many targets);
* z has entries +-1 (not normalised: ``E[z z^T] = I`` is what makes ``|<g, z>|`` a scale of
  ``||g||``), is drawn afresh each step from the rule's own seeded generator (its state is
  checkpointed, so a resumed run draws the same z) over the trained parameters only;
* the finite-difference pass replays the first pass's dropout masks and leaves BatchNorm running
  statistics alone (as SAM's perturbed pass);
* data-parallel: each process estimates the norms of its own samples (all processes draw the same
  z), the softmax normaliser is global (all-reduced maximum and sum), ``g_p`` is the all-reduced sum
  of the processes' ``sum_i p_i grad f_i``, and the update gradient the global batch mean, so the
  result equals one process holding the whole batch.

Cost: 3 forward + 2 backward passes, one of the forwards without an autograd graph; with a
backward at about two forwards that is 7/6 of SAM's 2F + 2B, the 1/6 overhead the paper reports.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from landscape import distributed as _dist
from landscape.losses import SampleTerms
from landscape.optim.base import PerturbationRule, RhoSchedule
from landscape.optim.noise import RngState, SeededGenerator
from landscape.optim.norm_statistics import frozen_norm_statistics
from landscape.optim.step import Step
from landscape.optim.tensors import global_norm, scaled, write_grads

__all__ = [
    "RWSAM",
    "RademacherDirection",
    "SwappedParameters",
    "gibbs_weights",
    "sample_counts",
    "sample_sums",
    "weighted_gradient",
]


class SwappedParameters:
    """Run a block at ``theta + e`` by pointing each parameter at a new tensor ``theta + e``.

    :meth:`apply_` computes ``theta + alpha e`` out of place and makes it each parameter's
    ``.data``; :meth:`restore_` points the parameters back at the tensors that hold theta, which
    were never written: theta comes back bit for bit, at no copy (``perturb_`` copies theta aside
    and back). Like ``perturb_`` it moves no autograd version counter: a graph recorded at theta
    may be held through the block and used after it (not inside it).
    """

    def __init__(self) -> None:
        self._saved: list[tuple[Tensor, Tensor]] | None = None

    def apply_(
        self,
        params: Sequence[Tensor],
        e: Sequence[Tensor | None],
        alpha: float = 1.0,
        theta: Sequence[Tensor] | None = None,
    ) -> None:
        """``params <- params + alpha e`` (``None`` in ``e``: that parameter stays). ``theta``:
        the parameters' ``.data`` when the caller has them already (each read is an alias op)."""
        if self._saved is not None:
            raise RuntimeError("SwappedParameters.apply_ called twice without restore_")
        theta = [p.data for p in params] if theta is None else theta
        chosen = [i for i, v in enumerate(e) if v is not None]
        moving = [(params[i], e[i]) for i in chosen]
        data = [theta[i] for i in chosen]
        steps = [
            v if (v.dtype, v.device) == (d.dtype, d.device) else v.to(dtype=d.dtype, device=d.device)
            for (_, v), d in zip(moving, data, strict=True)
        ]
        moved = torch._foreach_add(data, steps, alpha=alpha) if data else []
        self._saved = [(p, d) for (p, _), d in zip(moving, data, strict=True)]
        for (p, _), t in zip(moving, moved, strict=True):
            p.data = t

    def restore_(self) -> None:
        """Point the parameters back at theta (exact: those tensors were not written)."""
        if self._saved is not None:
            for p, theta in self._saved:
                p.data = theta
            self._saved = None

    @contextmanager
    def applied(
        self,
        model: nn.Module,
        params: Sequence[Tensor],
        e: Sequence[Tensor | None],
        rng: RngState,
        alpha: float = 1.0,
        theta: Sequence[Tensor] | None = None,
    ) -> Iterator[None]:
        """The block at ``theta + alpha e``, BatchNorm running statistics frozen, the global RNG
        put back to ``rng`` (the first pass's dropout masks); theta restored afterwards, also on
        error."""
        self.apply_(params, e, alpha, theta)
        try:
            with frozen_norm_statistics(model):
                rng.restore()
                yield
        finally:
            self.restore_()


class RademacherDirection:
    """A Rademacher vector z (entries +-1) shaped like a list of tensors.

    :meth:`draw` fills one reused flat buffer with +-1 from a seeded generator (views of it are
    shaped like the tensors: no allocation per step).
    """

    def __init__(self) -> None:
        self._key: tuple[tuple[torch.Size, torch.dtype, torch.device], ...] | None = None
        self._flat: Tensor | None = None
        self._bytes: Tensor | None = None
        self._signs: Tensor | None = None
        self.views: list[Tensor] = []

    def draw(self, tensors: Sequence[Tensor], generator: SeededGenerator) -> list[Tensor]:
        """A fresh z shaped like ``tensors`` (views of this object's buffer, overwritten by the
        next draw). Drawn on the first tensor's device in its dtype; same generator state, same z.

        The signs are the bits of uniform random bytes (eight signs per draw of the generator):
        bit k of byte j gives entry ``8 j + k`` as ``2 b - 1``, looked up in a table of the 256
        bytes' sign patterns."""
        key = tuple((t.shape, t.dtype, t.device) for t in tensors)
        if key != self._key:
            first = tensors[0]
            numel = sum(t.numel() for t in tensors)
            rows = (numel + 7) // 8
            flat = torch.empty(rows * 8, dtype=first.dtype, device=first.device)
            chunks = flat[:numel].split([t.numel() for t in tensors])
            self._flat, self._key = flat, key
            self._bytes = torch.empty(rows, dtype=torch.int64, device=first.device)
            values = torch.arange(256, device=first.device).unsqueeze(1)
            bits = values.bitwise_right_shift(torch.arange(8, device=first.device)).bitwise_and(1)
            self._signs = (2 * bits - 1).to(first.dtype)  # [256, 8]
            self.views = [c.view(t.shape) for c, t in zip(chunks, tensors, strict=True)]
        assert self._flat is not None and self._bytes is not None and self._signs is not None
        self._bytes.random_(0, 256, generator=generator.get(self._flat.device))
        torch.index_select(self._signs, 0, self._bytes, out=self._flat.view(-1, 8))
        return self.views


def sample_counts(terms: SampleTerms) -> Tensor:
    """How many targets each sample of ``terms`` counts (``[B]``, in the losses' dtype): counted
    targets for cross-entropy, output elements for mean-squared error, 1 for a callable loss."""
    if terms.elem is None:
        return torch.ones(len(terms.outputs), dtype=terms.outputs.dtype, device=terms.outputs.device)
    batch = terms.elem.shape[0]
    if terms.mask is None:
        size = float(terms.elem[0].numel())
        return torch.full((batch,), size, dtype=terms.elem.dtype, device=terms.elem.device)
    return terms.mask.reshape(batch, -1).sum(1)


def sample_sums(terms: SampleTerms) -> Tensor:
    """Detached ``[B]``: each sample's summed loss over its targets (a callable loss: its mean)."""
    if terms.elem is None:
        return terms.per_sample()
    return terms.elem.detach().reshape(terms.elem.shape[0], -1).sum(1)


def weighted_gradient(
    terms: SampleTerms, weights: Tensor, counts: Tensor, params: Sequence[Tensor]
) -> tuple[Tensor | None, ...]:
    """``grad sum_i weights_i f_i`` with respect to ``params``, ``f_i`` sample i's mean loss over
    its ``counts_i`` targets (:func:`sample_counts`, at least 1 where ``weights_i`` is not 0).

    Built-in losses: one backward from the per-target losses with ``weights_i / counts_i`` as
    their output gradient (no graph for the weighted sum itself)."""
    with torch.enable_grad():
        if terms.elem is None:  # a callable: mean_i (B w_i) f_i
            return torch.autograd.grad(terms.weighted(weights * len(weights)), params, allow_unused=True)
        per_target = (weights.to(terms.elem.dtype) / counts).reshape(-1, *([1] * (terms.elem.dim() - 1)))
        return torch.autograd.grad(
            terms.elem, params, grad_outputs=per_target.expand_as(terms.elem), allow_unused=True
        )


def gibbs_weights(scores: Tensor, counted: Tensor, lam: float, *, global_batch: bool = False) -> Tensor:
    """``p = softmax(lam * scores)`` over the samples with ``counted`` True (0 for the others).

    float64. ``global_batch``: the scores of every process of ``torch.distributed`` share one
    normaliser (all-reduced maximum and sum), so each process weights its own samples as one
    process holding the whole batch would.
    """
    logits = scores.mul(lam).masked_fill_(~counted, -math.inf)
    if not global_batch:
        return torch.softmax(logits, 0, dtype=torch.float64)
    logits = logits.to(torch.float64)
    peak = logits.max().reshape(1) if logits.numel() else torch.full((1,), -math.inf, dtype=torch.float64)
    peak = _dist.all_reduce_max_(peak)
    exps = torch.exp(logits - peak)
    return exps / _dist.all_reduce_sum_(exps.sum().reshape(1))


class RWSAM(PerturbationRule):
    """Reweighted SAM (Luo, Harandi, Phung, Le 2025, arXiv 2509.18001): the module docstring.

    ``lambda_``: inverse temperature lambda of the Gibbs weights (``0``: uniform weights, SAM);
    ``delta``: finite-difference step along the Rademacher vector z (per coordinate: the point
    ``theta + delta z`` is ``delta sqrt(n)`` away for n trained parameters). Defaults
    ``lambda_ = 1.0`` and ``delta = 1e-4`` are ours (the paper's values could not be read; 1e-4
    gave the smallest error of ``s_i`` against ``|<grad f_i, z>|`` in float32 on the built-in MLP
    and transformer, between truncation and rounding); rho = 0.05 as SAM. After each call
    ``last_norm_estimates`` holds the ``s_i`` (in the losses' dtype), ``last_sample_weights`` the
    ``p_i`` (float64; both for this process's samples) and ``last_direction`` the z used
    (overwritten by the next call).
    """

    name = "rwsam"
    cost = "3F+2B (one F without graph)"
    needs_targets = True

    def __init__(
        self,
        rho: float = 0.05,
        *,
        lambda_: float = 1.0,
        delta: float = 1e-4,
        rho_warmup: int = 0,
        rho_schedule: RhoSchedule | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(rho, rho_warmup=rho_warmup, rho_schedule=rho_schedule, seed=seed)
        if not (math.isfinite(lambda_) and lambda_ >= 0):
            raise ValueError(f"lambda must be finite and non-negative, got {lambda_}")
        if not (math.isfinite(delta) and delta > 0):
            raise ValueError(f"delta must be a positive number, got {delta}")
        self.lambda_ = float(lambda_)
        self.delta = float(delta)
        self._direction = RademacherDirection()
        self._swap = SwappedParameters()
        self.last_norm_estimates: Tensor | None = None
        self.last_sample_weights: Tensor | None = None

    @property
    def last_direction(self) -> list[Tensor]:
        """The Rademacher z of the last call, one tensor per trained parameter."""
        return self._direction.views

    def _global_sum(self, tensors: Sequence[Tensor | None]) -> list[Tensor | None]:
        """Data-parallel: the all-reduced sum of the processes' tensors; else as they are."""
        if not self.parallel.active:
            return list(tensors)
        present = [t for t in tensors if t is not None]
        flat = _dist.all_reduce_sum_(torch.cat([t.reshape(-1).to(torch.float64) for t in present]))
        pieces = iter(flat.split([t.numel() for t in present]))
        return [None if t is None else next(pieces).view_as(t).to(t.dtype) for t in tensors]

    def _shifted_sums(self, step: Step, rng: RngState, theta: Sequence[Tensor]) -> Tensor:
        """:func:`sample_sums` at ``theta + delta z`` for a fresh z: no graph, the first pass's
        dropout masks, BatchNorm running statistics untouched, theta restored bit for bit."""
        z = self._direction.draw(step.params, self.generator)
        with torch.no_grad(), self._swap.applied(step.model, step.params, z, rng, self.delta, theta):
            return sample_sums(step.loss.terms(step.outputs(), step.targets))

    def _compute(self, step: Step) -> Tensor:
        # the loss and targets first: a closure shows them in its first (captured) pass
        params, loss, targets = step.params, step.loss, step.targets
        rng = step.rng_state()
        with torch.enable_grad():
            clean = loss.terms(step.outputs(), targets)
        with torch.no_grad():
            value = clean.mean()
        theta = [p.data for p in params]
        # theta + delta z while the first pass's graph is held: it is used after theta is back
        shifted = self._shifted_sums(step, rng, theta)
        counts = sample_counts(clean)
        denominators = counts.clamp_min(1.0)
        # s_i = |f_i(theta + delta z) - f_i(theta)| / delta, f_i the mean over sample i's targets
        estimates = shifted.sub_(sample_sums(clean)).abs_().div_(denominators * self.delta)
        weights = gibbs_weights(estimates, counts > 0, self.lambda_, global_batch=self.parallel.active)
        grads = weighted_gradient(clean, weights, denominators, params)
        del clean
        g_p = self._global_sum(grads)
        eps = scaled(g_p, self.current_rho() / global_norm(g_p).clamp_min(torch.finfo(torch.float64).tiny))
        del grads, g_p
        with self._swap.applied(step.model, params, eps, rng, theta=theta):
            del eps
            _, perturbed_grads = step.gradient()
        self.last_norm_estimates, self.last_sample_weights = estimates, weights
        write_grads(params, perturbed_grads)
        return value.detach()
