"""Functional-SAM, LOGIT-SAM, ANGLE-SAM and their preconditioned forms.

Singh, Mobahi, Agarwala, Dauphin, "Avoiding spurious sharpness minimization broadens applicability
of SAM", ICML 2025, arXiv 2502.02407 (Sec. 4, App. C-D); equation numbers below are theirs.

With ``F`` the model outputs (logits), ``r = dL/dF`` and ``J = dF/dtheta``, SAM's gradient splits
to first order into a logit path and a functional path (Eq. 10):

    grad L(theta + rho eps*) = [J(theta)^T r(theta + rho eps*) - g]     (~ rho H_G eps*, logit path)
                             + [J(theta + rho eps*)^T r(theta) - g]     (~ rho H_F eps*, functional path)
                             + g + O(rho^2)

where ``H_G`` is the Gauss-Newton matrix and ``H_F = H - H_G`` the functional Hessian (Eq. 7-8).
The rules here weight the two paths separately.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from landscape.optim.base import PerturbationRule, RhoSchedule
from landscape.optim.step import Step
from landscape.optim.tensors import write_grads


class AngleSAM(PerturbationRule):
    """ANGLE-SAM (arXiv 2502.02407 App. D, Eq. 18-20): a perturbation angle phi between the two paths.

    ``g_ANGLE = g + sin(phi) [J(theta)^T r(theta + rho eps*) - g]
    + cos(phi) [J(theta + rho eps*)^T r(theta) - g]``                                  (Eq. 19)
    ``= g + rho sin(phi) H_G eps* + rho cos(phi) H_F eps* + O(rho^2)``                  (Eq. 20)

    phi = 0 is Functional-SAM, phi = pi/2 is LOGIT-SAM, phi = pi/4 is SAM with radius rho/sqrt(2)
    to first order. Implementation: pass 1 at theta keeps its graph (and the logits z) and gives g
    and r in one backward; pass 2 at theta + e gives z'; the functional term is a VJP of z' with r
    (at theta + e), r' = dL/dz' needs only the loss's backward, and the logit term is a VJP of the
    kept pass-1 graph with r' after theta is restored. Cost: 2 forward + 3 backward, with two sets
    of activations alive at once. Default rho = 0.05, phi = pi/4.

    ``residual_dtype`` stores r (a logits-sized tensor, ``[B, T, V]`` for a language model) in a
    smaller dtype (e.g. ``torch.bfloat16``) while pass 2 runs.
    """

    name = "angle-sam"
    cost = "2F+3B"

    def __init__(
        self,
        rho: float = 0.05,
        *,
        phi: float = math.pi / 4,
        geometry: str = "euclidean",
        rho_warmup: int = 0,
        rho_schedule: RhoSchedule | None = None,
        residual_dtype: torch.dtype | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(rho, geometry=geometry, rho_warmup=rho_warmup, rho_schedule=rho_schedule, seed=seed)
        self.phi = float(phi)
        self.residual_dtype = residual_dtype
        self.functional_weight, self.logit_weight = self._path_weights()

    def _path_weights(self) -> tuple[float, float]:
        """Weights (functional, logit) of the two paths: (cos phi, sin phi)."""
        return math.cos(self.phi), math.sin(self.phi)

    def _compute(self, step: Step) -> Tensor:
        params, loss, targets = step.params, step.loss, step.targets
        w_func, w_logit = self.functional_weight, self.logit_weight
        rng = step.rng_state()

        with torch.enable_grad():
            logits = step.outputs()
            value = loss(logits, targets)
            # one backward gives g and r = dL/dz together; the graph is kept only for the logit path
            *grads, residual = torch.autograd.grad(
                value, [*params, logits], allow_unused=True, retain_graph=w_logit != 0.0
            )
        # free what the chosen paths do not need: logits-sized tensors dominate memory for an LM
        kept_logits: Tensor | None = logits if w_logit != 0.0 else None
        del logits
        residual = residual.detach() if w_func != 0.0 else None
        if residual is not None and self.residual_dtype is not None:
            residual = residual.to(self.residual_dtype)
        eps = self.perturbation(step.named, grads, self.current_rho(), step.optimizer)

        func_grads: tuple[Tensor | None, ...] | None = None
        perturbed_residual: Tensor | None = None
        with step.perturbed(eps, rng), torch.enable_grad():
            del eps
            if w_func != 0.0:
                perturbed_logits = step.outputs()
            else:
                with torch.no_grad():
                    perturbed_logits = step.outputs()
            if w_logit != 0.0:
                # closed form for the built-in losses: no loss forward + backward on [B, T, V]
                perturbed_residual = loss.output_gradient(perturbed_logits, targets)
            if residual is not None:
                func_grads = torch.autograd.grad(
                    perturbed_logits,
                    params,
                    grad_outputs=residual.to(perturbed_logits.dtype),
                    allow_unused=True,
                )
            del perturbed_logits
        del residual

        logit_grads: tuple[Tensor | None, ...] | None = None
        if kept_logits is not None and perturbed_residual is not None:
            # theta is restored bit for bit, so the kept pass-1 graph is J(theta) again
            logit_grads = torch.autograd.grad(
                kept_logits, params, grad_outputs=perturbed_residual, allow_unused=True
            )

        write_grads(params, self._combine(grads, func_grads, logit_grads))
        return value.detach()

    def _combine(
        self,
        grads: list[Tensor | None],
        func_grads: tuple[Tensor | None, ...] | None,
        logit_grads: tuple[Tensor | None, ...] | None,
    ) -> list[Tensor | None]:
        """``(1 - sin - cos) g + sin g_logit + cos g_func``, skipping terms with weight 0."""
        w_func, w_logit = self.functional_weight, self.logit_weight
        w_plain = 1.0 - w_func - w_logit
        terms: list[tuple[float, list[Tensor | None]]] = []
        if w_plain != 0.0:
            terms.append((w_plain, list(grads)))
        if func_grads is not None:
            terms.append((w_func, list(func_grads)))
        if logit_grads is not None:
            terms.append((w_logit, list(logit_grads)))
        if len(terms) == 1 and terms[0][0] == 1.0:
            return terms[0][1]  # func-sam, logit-sam: the one VJP is the gradient
        out: list[Tensor | None] = [None] * len(grads)
        if not terms:
            return out
        # tensors present in every term go through foreach kernels (one launch per term, not one
        # per parameter); the rest (a parameter unused by one of the passes) one by one
        full = [i for i in range(len(grads)) if all(t[i] is not None for _, t in terms)]
        if full:
            weight, first = terms[0]
            total = torch._foreach_mul([first[i] for i in full], weight)
            for weight, term in terms[1:]:
                torch._foreach_add_(total, [term[i] for i in full], alpha=weight)
            for i, value in zip(full, total, strict=True):
                out[i] = value
        done = set(full)
        for i in range(len(grads)):
            if i in done:
                continue
            present = [(weight, term[i]) for weight, term in terms if term[i] is not None]
            if present:
                weight, first = present[0]
                total_i = first * weight
                for weight, term_i in present[1:]:
                    total_i = total_i.add(term_i, alpha=weight)
                out[i] = total_i
        return out


class FunctionalSAM(AngleSAM):
    """Functional-SAM: ``g_FSAM = J(theta + rho eps*)^T r(theta)`` (arXiv 2502.02407 Eq. 11, App. C).

    The Jacobian is taken at the SAM ascent point, the loss-output derivative r at theta, which
    keeps SAM's functional path (``~ rho H_F eps*``) and drops its logit path. Cost: 2 forward +
    2 backward, as SAM (the first backward gives g and r together; the second is the VJP of the
    perturbed outputs with r). Memory: one copy of the parameters plus r (logits-sized; see
    ``residual_dtype``). Default rho = 0.05 (the paper tunes rho per method and finds Functional-
    SAM's optimum larger than SAM's, without giving the value).
    """

    name = "func-sam"
    cost = "2F+2B"

    def __init__(
        self,
        rho: float = 0.05,
        *,
        geometry: str = "euclidean",
        rho_warmup: int = 0,
        rho_schedule: RhoSchedule | None = None,
        residual_dtype: torch.dtype | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(
            rho,
            phi=0.0,
            geometry=geometry,
            rho_warmup=rho_warmup,
            rho_schedule=rho_schedule,
            residual_dtype=residual_dtype,
            seed=seed,
        )

    def _path_weights(self) -> tuple[float, float]:
        return 1.0, 0.0


class LogitSAM(AngleSAM):
    """LOGIT-SAM: ``g = J(theta)^T r(theta + rho eps*)`` (arXiv 2502.02407 App. D, Eq. 19 at phi = pi/2).

    Only SAM's logit path (``~ rho H_G eps*``). Cost: 2 forward (the perturbed one without a
    graph) + 2 backward; the pass-1 graph is kept until the end. Default rho = 0.05.
    """

    name = "logit-sam"
    cost = "2F+2B"

    def __init__(
        self,
        rho: float = 0.05,
        *,
        geometry: str = "euclidean",
        rho_warmup: int = 0,
        rho_schedule: RhoSchedule | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(
            rho,
            phi=math.pi / 2,
            geometry=geometry,
            rho_warmup=rho_warmup,
            rho_schedule=rho_schedule,
            seed=seed,
        )

    def _path_weights(self) -> tuple[float, float]:
        return 0.0, 1.0


class PrecondFunctionalSAM(FunctionalSAM):
    """Preconditioned Functional-SAM: Eq. 11 with the perturbation ``rho M^{-1} eps*`` of Eq. 12.

    ``g = J(theta + rho M^{-1} eps*)^T r(theta)`` with ``M = sqrt(v_hat) + eps_adam`` from the
    base AdamW (see :class:`landscape.optim.PrecondSAM`); the paper's best method (arXiv
    2502.02407 Sec. 5.2, Table 1). rho is on the precond scale (default 0.001, ours). Cost: 2F+2B.
    """

    name = "precond-func-sam"

    def __init__(
        self,
        rho: float = 0.001,
        *,
        rho_warmup: int = 0,
        rho_schedule: RhoSchedule | None = None,
        residual_dtype: torch.dtype | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(
            rho,
            geometry="adam",
            rho_warmup=rho_warmup,
            rho_schedule=rho_schedule,
            residual_dtype=residual_dtype,
            seed=seed,
        )
