"""The gradient-rule base classes: :class:`GradientRule` and :class:`PerturbationRule`.

A *gradient rule* decides how the training gradient is formed (plain, SAM, Functional-SAM, ...); a
*base optimizer* (``torch.optim.AdamW``, ``torch.optim.SGD``, :class:`landscape.optim.SGLD`) decides
how the parameters move. The rule fills ``p.grad`` of every trained parameter (``requires_grad``)
and returns the batch loss; the base optimizer then steps. This is the optax split of
"gradient transformation" and "update", applied to the gradient's formation.

A rule implements one hook, ``_compute(step)``, on a :class:`landscape.optim.step.Step` (model,
trained parameters, batch, loss, base optimizer and the operations rules share).

Notation used throughout (Singh, Mobahi, Agarwala, Dauphin 2025, arXiv 2502.02407, Sec. 2-3):
``g = grad L(theta)`` on the batch, ``F`` the model outputs (logits), ``r = dL/dF``,
``J = dF/dtheta`` so that ``g = J^T r``, and ``eps* = g / ||g||`` with the global L2 norm over
the trained parameters.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from landscape import distributed as _dist
from landscape.losses import Loss, LossLike, as_loss
from landscape.optim.noise import SeededGenerator
from landscape.optim.parallel import BatchShare
from landscape.optim.step import Step, split_labels, trained_parameters
from landscape.optim.tensors import global_norm, scaled

RhoSchedule = Callable[[int], float]
"""Maps the rule's step counter (0, 1, 2, ...) to the perturbation radius rho used at that step."""


class GradientRule:
    """Base class of gradient rules: fill ``p.grad`` of the trained parameters, return the loss.

    Subclasses implement ``_compute(step)`` (see :class:`landscape.optim.step.Step`). ``step``
    counts completed calls (it drives rho warm-up); ``generator`` holds the seeded random stream
    of rules that draw noise. Both are saved by :meth:`state_dict` for bit-exact resumption.
    """

    name: ClassVar[str] = "rule"
    cost: ClassVar[str] = "1F+1B"
    needs_targets: ClassVar[bool] = False
    """Whether the rule splits the loss by sample (RW-SAM, m-SAM): a closure must show the targets."""
    data_parallel: ClassVar[bool] = True
    """Whether the rule runs data-parallel under ``torch.distributed`` (see :meth:`compute_gradient`)."""

    def __init__(self, *, seed: int = 0) -> None:
        self.step = 0
        self.generator = SeededGenerator(seed)
        # this process's share n_r / N of the global batch while a data-parallel call runs
        self.parallel = BatchShare()

    def _local_count(self, loss: Loss, targets: Any) -> float:
        """What this rule's batch mean divides by (the loss's count: counted targets for
        cross-entropy, elements for mse, samples for a callable). The data-parallel weight of a
        process is its count over the sum."""
        return float(loss.count(targets))

    def _begin_data_parallel(self, count: float | None) -> None:
        if not _dist.is_distributed():
            self.parallel.end()
            return
        if not self.data_parallel:
            raise NotImplementedError(
                f"rule {self.name!r} does not run data-parallel (torch.distributed) yet"
            )
        self.parallel.begin(count)

    def global_mean(self, tensors: Sequence[Tensor | None]) -> list[Tensor | None]:
        """Data-parallel: ``sum_r (n_r / N) t_r`` of per-process batch means (the global-batch mean);
        otherwise ``tensors`` as they are. What a rule needs mid-step, e.g. ``g`` for eps*."""
        return self.parallel.global_mean(tensors)

    def compute_gradient(
        self,
        model: nn.Module,
        inputs: Any,
        targets: Any = None,
        loss_fn: LossLike | None = None,
        optimizer: torch.optim.Optimizer | None = None,
    ) -> Tensor:
        """Fill ``p.grad`` of ``model``'s trained parameters with this rule's gradient.

        ``model(inputs)`` runs the forward pass (``model(**inputs)`` for a dict batch). Without
        ``targets``, a dict batch's ``labels`` entry is the targets (Hugging Face style) and the
        loss defaults to ``"model"``, the model's own; otherwise ``loss_fn`` defaults to
        cross-entropy. ``optimizer`` is the base optimizer; only rules that read its state
        (``precond-*``) need it. Returns the detached mean batch loss at the unperturbed
        parameters (``fsgld``: at its perturbed point, the only point it evaluates).

        Touches: ``p.grad`` of the trained parameters (replaced), the rule's step counter and
        generator, BatchNorm running statistics (updated once, by the unperturbed pass, as one
        training forward would) and the global RNG (advanced as one training forward advances
        it: the perturbed passes replay the first pass's dropout masks). Parameters are restored
        bit for bit; training mode and ``requires_grad`` flags are left alone.

        Data-parallel: when ``torch.distributed`` runs with more than one process, each process
        passes its own part of the batch and every process ends with the gradient and loss of the
        whole (global) batch: per-process means are combined with weights ``n_r / N`` (counted
        targets; all-reduced), and what a rule needs mid-step is global too (``g`` and so eps*
        for the SAM family; RW-SAM's softmax normaliser). m-SAM keeps its micro-batches, and
        their perturbations, inside each process. Every process must build the rule with the same
        seed (fSGLD then draws the same e everywhere) and call it at the same steps.
        """
        named = trained_parameters(model)
        if not named:
            raise ValueError("the model has no parameter with requires_grad=True")
        inputs, targets, from_labels = split_labels(inputs, targets)
        if targets is None:
            raise ValueError("compute_gradient needs targets (or a dict batch with 'labels')")
        if loss_fn is None:
            loss_fn = "model" if from_labels else "cross_entropy"
        loss = as_loss(loss_fn, model=model)
        step = Step(
            model,
            named,
            optimizer,
            inputs=inputs,
            targets=targets,
            loss=loss,
            rule=self.name,
            needs_targets=self.needs_targets,
        )
        return self._run(step, self._local_count(loss, targets) if _dist.is_distributed() else None)

    def compute_gradient_from_closure(
        self,
        closure: Callable[[], Tensor],
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
    ) -> Tensor:
        """As :meth:`compute_gradient`, with a closure that runs forward + ``backward()`` and
        returns the loss (``torch.optim`` style; it may zero the gradients first, and it is
        called once per pass the rule makes).

        Rules that need only gradients at parameter points (plain, SAM, ASAM, precond-SAM,
        fSGLD) call it as it is. The others call it with ``model``'s forward captured
        (:mod:`landscape.optim.closure`): the closure must call ``model`` once and its loss must
        reach the parameters through the model's output. RW-SAM and m-SAM also need the targets:
        compute the closure's loss with the optimizer's criterion
        (:meth:`landscape.optim.SharpnessAwareOptimizer.loss`) or pass ``labels=`` to a Hugging
        Face model. ``.grad`` is replaced as by :meth:`compute_gradient`.
        """
        named = trained_parameters(model)
        if not named:
            raise ValueError("the model has no parameter with requires_grad=True")
        step = Step(
            model, named, optimizer, closure=closure, rule=self.name, needs_targets=self.needs_targets
        )
        return self._run(step, None)

    def _run(self, step: Step, count: float | None) -> Tensor:
        """One call: data-parallel bracket around the hook, then the step counter."""
        self._begin_data_parallel(count)
        try:
            value = self._compute(step)
            if step.grad_scale != 1.0:  # a GradScaler's scale, which the rule's own passes lacked
                grads = [p.grad for p in step.params if p.grad is not None]
                torch._foreach_mul_(grads, step.grad_scale)
            value = self.parallel.finish(step.params, value)
        finally:
            self.parallel.end()
        self.step += 1
        return value

    def _compute(self, step: Step) -> Tensor:  # pragma: no cover - abstract
        """Fill ``p.grad`` of ``step.params`` and return the detached batch loss."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """The rule's mutable state: step counter and generator state."""
        return {"name": self.name, "step": self.step, "generator": self.generator.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (the rule's options are not part of it)."""
        if state.get("name", self.name) != self.name:
            raise ValueError(f"state of rule {state['name']!r} loaded into rule {self.name!r}")
        self.step = int(state["step"])
        self.generator.load_state_dict(state["generator"])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, step={self.step})"


GEOMETRIES = ("euclidean", "adaptive", "adam")


def adam_denominator(optimizer: torch.optim.Optimizer, param: Tensor) -> Tensor | None:
    """Adam's own denominator ``M = sqrt(v_hat) + eps`` for ``param``, or ``None`` before step 1.

    ``v_hat = exp_avg_sq / (1 - beta2^t)`` after the last completed step t (``max_exp_avg_sq``
    when ``amsgrad``), ``beta2`` and ``eps`` from the parameter's group: exactly the tensor that
    ``torch.optim.Adam``/``AdamW`` divide the first moment by (Singh, Mobahi, Agarwala, Dauphin
    2025, arXiv 2502.02407, Eq. 12: "its own preconditioner"). ``None`` means M = 1.
    """
    return adam_denominators(optimizer, [param])[0]


def adam_denominators(optimizer: torch.optim.Optimizer, params: Sequence[Tensor]) -> list[Tensor | None]:
    """:func:`adam_denominator` for several parameters (one pass over the param groups)."""
    group_of = {id(p): group for group in optimizer.param_groups for p in group["params"]}
    out: list[Tensor | None] = []
    for p in params:
        state = optimizer.state.get(p)
        t = float(state["step"]) if state and "exp_avg_sq" in state else 0.0
        if t == 0 or id(p) not in group_of:
            out.append(None)
            continue
        group = group_of[id(p)]
        v = state["max_exp_avg_sq"] if group.get("amsgrad", False) else state["exp_avg_sq"]
        out.append((v / (1.0 - group["betas"][1] ** t)).sqrt() + group["eps"])
    return out


def _adam_optimizer(optimizer: torch.optim.Optimizer | None) -> torch.optim.Optimizer:
    base = getattr(optimizer, "base_optimizer", optimizer)
    if base is None:
        raise ValueError("the 'adam' perturbation geometry (precond-*) needs optimizer=<the base AdamW>")
    if not all("betas" in g and "eps" in g for g in base.param_groups):
        raise TypeError(f"precond-* rules read Adam's second moments; got {type(base).__name__}")
    return base


class PerturbationRule(GradientRule):
    """A rule that evaluates something at ``theta + e`` with a SAM-type ascent perturbation e.

    The radius at step t is ``rho_schedule(t)`` when given, otherwise ``rho`` times the linear
    warm-up factor ``min(1, (t + 1) / rho_warmup)`` (no warm-up when ``rho_warmup = 0``).

    Geometries of e (all with ``eps* = g / ||g||``):

    - ``"euclidean"``: ``e = rho eps*`` (SAM: Foret, Kleiner, Mobahi, Neyshabur 2021,
      arXiv 2010.01412; Eq. 2 of arXiv 2502.02407).
    - ``"adaptive"``: ``e = rho T^2 g / ||T g||``, ``T = |w| + eta`` elementwise on tensors whose
      name contains "weight", ``T = 1`` elsewhere (ASAM: Kwon, Kim, Park, Choi 2021, arXiv 2102.11600, Eq. 11; the
      official SamsungLabs/ASAM selects tensors by name in the same way).
    - ``"adam"``: ``e = rho M^{-1} eps*`` with Adam's denominator M (arXiv 2502.02407 Eq. 12): eps* is
      normalised first, then preconditioned, so ``||e|| != rho`` and rho lives on another scale.
    """

    local_perturbation: ClassVar[bool] = False
    """True: data-parallel calls keep e per process (m-SAM's micro-batch perturbations)."""

    def __init__(
        self,
        rho: float = 0.05,
        *,
        geometry: str = "euclidean",
        eta: float = 0.01,
        rho_warmup: int = 0,
        rho_schedule: RhoSchedule | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(seed=seed)
        if geometry not in GEOMETRIES:
            raise ValueError(f"geometry must be one of {GEOMETRIES}, got {geometry!r}")
        if rho < 0 or rho_warmup < 0:
            raise ValueError("rho and rho_warmup must be non-negative")
        self.rho = float(rho)
        self.geometry = geometry
        self.eta = float(eta)
        self.rho_warmup = int(rho_warmup)
        self.rho_schedule = rho_schedule

    def current_rho(self) -> float:
        """The radius used by the next call (step ``self.step``)."""
        if self.rho_schedule is not None:
            return float(self.rho_schedule(self.step))
        if self.rho_warmup > 0:
            return self.rho * min(1.0, (self.step + 1) / self.rho_warmup)
        return self.rho

    def perturbation(
        self,
        named: Sequence[tuple[str, Tensor]],
        grads: Sequence[Tensor | None],
        rho: float,
        optimizer: torch.optim.Optimizer | None = None,
    ) -> list[Tensor | None]:
        """The perturbation e (one tensor per parameter; ``None`` where the gradient is ``None``).

        Data-parallel, ``grads`` are this process's and e is built from the global-batch ``g``
        (``local_perturbation`` rules, m-SAM, keep theirs)."""
        if not self.local_perturbation:
            grads = self.global_mean(grads)
        # clamp instead of adding 1e-12: e is exactly rho g/||g|| for any non-zero g, and 0 for g = 0
        tiny = torch.finfo(torch.float64).tiny
        if self.geometry == "adaptive":
            scales = [
                p.detach().abs().add(self.eta) if ("weight" in name and g is not None) else None
                for (name, p), g in zip(named, grads, strict=True)
            ]
            scaled_grads = [g if s is None else g * s for g, s in zip(grads, scales, strict=True)]
            factor = rho / global_norm(scaled_grads).clamp_min(tiny)
            twice = [g if s is None else g * s for g, s in zip(scaled_grads, scales, strict=True)]
            return scaled(twice, factor)
        eps = scaled(grads, rho / global_norm(grads).clamp_min(tiny))
        if self.geometry == "adam":
            base = _adam_optimizer(optimizer)
            denominators = adam_denominators(base, [p for _, p in named])
            eps = [e if (e is None or m is None) else e / m for e, m in zip(eps, denominators, strict=True)]
        return eps


def check_finite_positive(value: float, what: str) -> float:
    """Return ``value`` as float after checking it is a positive real number (``inf`` allowed)."""
    value = float(value)
    if not value > 0:  # also rejects NaN
        raise ValueError(f"{what} must be positive, got {value}")
    return value
