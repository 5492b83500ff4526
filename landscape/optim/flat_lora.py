"""FMLoRA and EFMLoRA: SAM-style flatness for LoRA, with the perturbation carried by B alone.

Deng, Zhu, Pang, Yang, Fu, Zhang, "Efficiently Seeking Flat Minima for Better Generalization in
Fine-Tuning Large Language Models and Beyond", arXiv 2508.00522 (2025; v1 "EFlat-LoRA").

Setting: one LoRA layer ``W = W0 + s B A`` (:mod:`landscape.optim.lora`), B [n x r], A [r x m],
s = alpha / r; ``G = grad_W L`` is the gradient with respect to the merged weight, so that LoRA's
own gradients are ``grad_B = s G A^T`` and ``grad_A = s B^T G`` (chain rule).

* **Eq. 12** (full-space gradient from LoRA's gradients)::

      G_hat = 1/2 [ (1/s) grad_B (A^T)^+  +  (1/s) (B^T)^+ grad_A ]
            = 1/2 [ G P_A + P_B G ],     P_A = A^+ A (row space of A),  P_B = B B^+ (column space of B).

  The second line is ours: each term recovers one projection of G. At LoRA's start B = 0, so
  (B^T)^+ = 0 and G_hat = G P_A / 2.
* **Eq. 13** (ascent direction): ``Ebar_W = rho G_hat / ||G_hat||``. The norm is per LoRA layer
  (``normalization="layer"``, the default) or over all layers together (``"global"``, as SAM).
* **Eq. 15** (transfer to B): ``E_B = (1/s) Ebar_W A^+``. The realised full-space perturbation is
  then ``s E_B A = Ebar_W P_A`` (ours): the part of Ebar_W in A's row space, A itself unperturbed.

**FMLoRA** (:class:`FMLoRA`): gradient at theta, E_B from it, all gradients again at
``B + E_B`` (2 forward + 2 backward, like SAM). **EFMLoRA** (:class:`EFMLoRA`): keeps
``E_t = (1 - beta) E_{t-1} + beta E_B^t`` and takes the step's single gradient at
``B + E_{t-1}``; E_B^t comes from that same pass's gradients (1 forward + 1 backward).

Nothing of size n x m is formed by the rules (ours): with ``Pa = A^+`` [m x r] and
``Qb = (B^T)^+`` [n x r],

    G_hat A^+ = (1 / 2s) [ grad_B (Pa^T Pa) + Qb (grad_A Pa) ],                         [n x r]
    ||G_hat||^2 = (1 / 4s^2) [ <grad_B^T grad_B, Pa^T Pa> + <Qb^T Qb, grad_A grad_A^T>
                               + 2 tr((grad_B^T Qb)(grad_A Pa)) ],

all products of r x r matrices (from ||X + Y||^2 = ||X||^2 + ||Y||^2 + 2 <X, Y>). The
pseudo-inverses come from ``A^+ = A^T (A A^T)^+`` and ``(B^T)^+ = B (B^T B)^+`` with the r x r Gram
matrices formed and eigendecomposed in float64 (one batched ``eigh`` for all layers of equal
rank): more accurate than a float32 SVD ``pinv`` of float32 factors (measured: relative error of
E_B 1e-9 against 2e-4 at cond(A) = 1e4), and much cheaper than two SVDs per layer. The extra
cost per step is a few small products per layer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from landscape.errors import UserError
from landscape.losses import LossLike, as_loss
from landscape.models import unwrap_output
from landscape.optim.base import GradientRule, PerturbationRule, RhoSchedule
from landscape.optim.lora import LoRAFactors, lora_layers
from landscape.optim.noise import RngState
from landscape.optim.norm_statistics import frozen_norm_statistics
from landscape.optim.step import Step, trained_parameters
from landscape.optim.tensors import perturb_, restore_, write_grads

__all__ = [
    "EFMLoRA",
    "FMLoRA",
    "LoRADiagnostics",
    "LoRAGradient",
    "NORMALIZATIONS",
    "ascent_perturbation",
    "b_perturbations",
    "estimate_full_gradient",
    "transfer_to_b",
]

NORMALIZATIONS = ("layer", "global")
"""How Eq. 13 normalises the ascent direction: per LoRA layer, or over all layers at once."""


def compute_dtype(t: Tensor) -> torch.dtype:
    """float64 for float64 tensors, else float32: pseudo-inverses are never taken in half precision."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


# ------------------------------------------------------------------------------------- dense form
def estimate_full_gradient(A: Tensor, B: Tensor, grad_A: Tensor, grad_B: Tensor, scaling: float) -> Tensor:
    """Eq. 12 of arXiv 2508.00522, written out densely (n x m): ``1/2 [(1/s) gB (A^T)^+ + (1/s) (B^T)^+ gA]``.

    With ``gB = s G A^T`` and ``gA = s B^T G`` this equals ``1/2 (G P_A + P_B G)``. For reference and
    tests; the rules use the equivalent low-rank form of :func:`b_perturbations`.
    """
    dtype = compute_dtype(A)
    A, B, gA, gB = (t.detach().to(dtype) for t in (A, B, grad_A, grad_B))
    first = gB @ torch.linalg.pinv(A.mT)
    second = torch.linalg.pinv(B.mT) @ gA
    return (first + second) / (2.0 * scaling)


def ascent_perturbation(
    estimates: Sequence[Tensor], rho: float, normalization: str = "layer"
) -> list[Tensor]:
    """Eq. 13: ``Ebar_W = rho G_hat / ||G_hat||_F``, per layer (``"layer"``) or over all (``"global"``).

    A zero G_hat gives a zero perturbation.
    """
    _check_normalization(normalization)
    if normalization == "global":
        total = math.sqrt(sum(float(e.double().square().sum()) for e in estimates))
        return [e * (rho / total) if total > 0 else torch.zeros_like(e) for e in estimates]
    out = []
    for e in estimates:
        norm = float(e.double().norm())
        out.append(e * (rho / norm) if norm > 0 else torch.zeros_like(e))
    return out


def transfer_to_b(E_W: Tensor, A: Tensor, scaling: float) -> Tensor:
    """Eq. 15: ``E_B = (1/s) Ebar_W A^+`` (n x r); then ``s E_B A = Ebar_W P_A``."""
    dtype = compute_dtype(A)
    return (E_W.to(dtype) @ torch.linalg.pinv(A.detach().to(dtype))) / scaling


# ---------------------------------------------------------------------------------- low-rank form
def _check_normalization(normalization: str) -> None:
    if normalization not in NORMALIZATIONS:
        raise UserError(
            f"unknown LoRA perturbation normalization {normalization!r}; choose one of {NORMALIZATIONS}"
        )


def sigma_rtol(dim: int, dtype: torch.dtype) -> float:
    """Singular values below ``sigma_rtol * sigma_max`` count as zero in the pseudo-inverses.

    ``max(dim * eps(dtype), 1e-6)``: ``dim * eps`` is ``torch.linalg.pinv``'s default cut (the
    factors carry no more precision than their own dtype); 1e-6 stays clear of the float64
    eigendecomposition's noise floor on the Gram matrix (about ``sqrt(r eps64) ~ 5e-8``).
    """
    return max(dim * torch.finfo(dtype).eps, 1e-6)


def _psd_pinv(grams: Tensor, rtols: Tensor) -> Tensor:
    """Pseudo-inverses of a batch of symmetric PSD matrices ``[k, r, r]``; eigenvalues below
    ``rtol^2 lambda_max`` (i.e. singular values of the factor below ``rtol sigma_max``) dropped."""
    lam, U = torch.linalg.eigh(grams)
    cutoff = rtols.square().unsqueeze(-1) * lam[..., -1:].clamp_min(0.0)
    keep = lam > cutoff  # all False for an exactly zero Gram (B = 0 at LoRA's start)
    inv = torch.where(keep, 1.0 / torch.where(keep, lam, torch.ones_like(lam)), torch.zeros_like(lam))
    return (U * inv.unsqueeze(-2)) @ U.mT


@dataclass
class _Terms:
    """Per-layer E_B (float64), squared norms of G_hat (float64 vector) and the Grams A A^T."""

    E: list[Tensor]
    sq: Tensor
    gram_A: list[Tensor]


def _flat_lora_terms(
    As: Sequence[Tensor],
    Bs: Sequence[Tensor],
    grads_A: Sequence[Tensor | None],
    grads_B: Sequence[Tensor | None],
    scalings: Sequence[float],
    rho: float,
    normalization: str,
) -> _Terms:
    # Pseudo-inverses through the r x r Gram matrices, formed and eigendecomposed in float64:
    # A^+ = A^T (A A^T)^+ and (B^T)^+ = B (B^T B)^+ hold for any A, B. Squaring the condition number
    # costs nothing in float64 next to an SVD pinv of float32 factors, and r x r eigendecompositions
    # of all layers run as one batched call instead of two SVDs of r x m and n x r per layer.
    _check_normalization(normalization)
    f64 = torch.float64
    k = len(As)
    # One float64 product per factor gives three Grams at once:
    #   [A; gA] [A; gA]^T = [[A A^T, A gA^T], [gA A^T, gA gA^T]],
    #   [B, gB]^T [B, gB] = [[B^T B, B^T gB], [gB^T B, gB^T gB]].
    bg64: list[Tensor] = []
    MA: list[Tensor] = []
    MB: list[Tensor] = []
    for A, B, gA, gB in zip(As, Bs, grads_A, grads_B, strict=True):
        ag = torch.cat([A.detach(), torch.zeros_like(A) if gA is None else gA.detach()], 0).to(f64)
        bg = torch.cat([B.detach(), torch.zeros_like(B) if gB is None else gB.detach()], 1).to(f64)
        MA.append(ag @ ag.mT)
        MB.append(bg.mT @ bg)
        bg64.append(bg)
    gram_A: list[Tensor] = [torch.empty(0)] * k
    E: list[Tensor] = [torch.empty(0)] * k
    sq = torch.zeros(k, dtype=f64, device=As[0].device if k else None)
    groups: dict[tuple[int, torch.device], list[int]] = {}
    for i, A in enumerate(As):
        groups.setdefault((A.shape[0], A.device), []).append(i)
    stacked: list[tuple[Tensor, list[int]]] = []
    for (r, _), idx in groups.items():
        ma, mb = torch.stack([MA[i] for i in idx]), torch.stack([MB[i] for i in idx])
        Ga, gaAt, gagaT = ma[:, :r, :r], ma[:, r:, :r], ma[:, r:, r:]
        Gb, gbTb, gbTgb = mb[:, :r, :r], mb[:, r:, :r], mb[:, r:, r:]
        rtols = torch.tensor(
            [sigma_rtol(max(As[i].shape), As[i].dtype) for i in idx]
            + [sigma_rtol(max(Bs[i].shape), Bs[i].dtype) for i in idx],
            dtype=f64,
            device=ma.device,
        )
        pinvs = _psd_pinv(torch.cat([Ga, Gb]), rtols)
        Ga_p, Gb_p = pinvs[: len(idx)], pinvs[len(idx) :]  # Pa^T Pa = (A A^T)^+ ; Qb^T Qb = (B^T B)^+
        gaPa = gaAt @ Ga_p  # grad_A A^+, [g, r, r]
        gbQb = gbTb @ Gb_p  # grad_B^T (B^T)^+
        xx = (gbTgb * Ga_p).sum((-2, -1))
        yy = (Gb_p * gagaT).sum((-2, -1))
        # <G P_A, P_B G> = ||P_B G P_A||^2 >= 0, so the three terms never cancel
        xy = (gbQb * gaPa.mT).sum((-2, -1))
        s = torch.tensor([scalings[i] for i in idx], dtype=f64, device=ma.device)
        sq[torch.tensor(idx, device=sq.device)] = ((xx + yy + 2.0 * xy).clamp_min(0.0) / (4.0 * s**2)).to(
            sq.device
        )
        # (1/s) G_hat A^+ = (1 / 2s^2) [B, gB] [[(B^T B)^+ grad_A A^+], [(A A^T)^+]]
        stacked.append((torch.cat([Gb_p @ gaPa, Ga_p], 1) / (2.0 * s**2).view(-1, 1, 1), idx))
        for j, i in enumerate(idx):
            gram_A[i] = Ga[j]
    if normalization == "global":
        # torch.where, not an `if`: no host-device synchronisation on accelerators
        total = sq.sum()
        factors = torch.where(total > 0, rho / total.clamp_min(torch.finfo(f64).tiny).sqrt(), 0.0).expand(k)
    else:
        factors = torch.where(sq > 0, rho / sq.clamp_min(torch.finfo(f64).tiny).sqrt(), 0.0)
    for coef, idx in stacked:
        # rho / ||G_hat|| folded into the r x r factors: one matmul per layer below
        coef = coef * factors[torch.tensor(idx, device=factors.device)].to(coef.device).view(-1, 1, 1)
        for j, i in enumerate(idx):
            E[i] = bg64[i] @ coef[j]
    return _Terms(E, sq, gram_A)


def b_perturbations(
    As: Sequence[Tensor],
    Bs: Sequence[Tensor],
    grads_A: Sequence[Tensor | None],
    grads_B: Sequence[Tensor | None],
    scalings: Sequence[float],
    rho: float,
    normalization: str = "layer",
) -> tuple[list[Tensor], Tensor]:
    """E_B of every layer (Eqs. 12 -> 13 -> 15) in low-rank form, and ``||G_hat||_F^2`` per layer.

    ``As[i]``, ``Bs[i]`` are layer i's factors, ``grads_*[i]`` the loss gradients with respect to
    them (``None``: zero), ``scalings[i]`` its s. Returns the perturbations of the B matrices and
    the squared norms of the Eq. 12 estimates, both float64. See the module docstring for the
    formulas; the pseudo-inverses go through the float64 Gram matrices (:func:`sigma_rtol`).
    """
    terms = _flat_lora_terms(As, Bs, grads_A, grads_B, scalings, rho, normalization)
    return terms.E, terms.sq


def realised_norms(
    As: Sequence[Tensor],
    Es: Sequence[Tensor | None],
    scalings: Sequence[float],
    gram_A: Sequence[Tensor] | None = None,
) -> Tensor:
    """``||s E_B A||_F`` per layer (float64 vector) without forming n x m: ``s^2 <E^T E, A A^T>``.

    ``gram_A``: the float64 ``A A^T`` if already at hand. ``None`` entries of ``Es`` give 0.
    """
    f64 = torch.float64
    if gram_A is None:
        gram_A = [A.detach().to(f64) @ A.detach().to(f64).mT for A in As]
    out = torch.zeros(len(As), dtype=f64, device=As[0].device if len(As) else None)
    groups: dict[int, list[int]] = {}
    for i, E in enumerate(Es):
        if E is not None:
            groups.setdefault(E.shape[-1], []).append(i)
    for idx in groups.values():
        ete = torch.stack([Es[i].to(f64).mT @ Es[i].to(f64) for i in idx])
        grams = torch.stack([gram_A[i].to(ete.device) for i in idx])
        s2 = torch.tensor([scalings[i] ** 2 for i in idx], dtype=f64, device=ete.device)
        norms = (s2 * (ete * grams).sum((-2, -1))).clamp_min(0.0).sqrt()
        out[torch.tensor(idx, device=out.device)] = norms.to(out.device)
    return out


# ------------------------------------------------------------------------------------------ rules
@dataclass
class LoRADiagnostics:
    """What the LoRA rules report on a diagnostic step.

    ``cond_A``: condition number ``sigma_max / sigma_min`` of each layer's A (the paper's failure
    signature when it grows: A^+ amplifies noise; about 3 at Kaiming init with r = 8, in = 32).
    ``perturbation_norm``: ``||s E_B A||_F`` over all layers (global L2) of the perturbation used
    at the last step (0 for plain LoRA and for EFMLoRA's first step); ``perturbation_norms`` per
    layer. ``ema_sharpness_gap``: the last ``|S_EMA - S_SAM|`` from
    :meth:`EFMLoRA.ema_sharpness_gap` (``None`` if never computed).
    """

    cond_A: dict[str, float]
    perturbation_norm: float
    perturbation_norms: dict[str, float] = field(default_factory=dict)
    ema_sharpness_gap: float | None = None

    def as_dict(self, per_layer: bool = False) -> dict[str, float]:
        """Flat ``{name: float}`` for a training log (per-layer keys ``cond_A/<layer>`` on request)."""
        conds = list(self.cond_A.values())
        out = {
            "cond_A_max": max(conds) if conds else float("nan"),
            "cond_A_mean": sum(conds) / len(conds) if conds else float("nan"),
            "perturbation_norm": self.perturbation_norm,
        }
        if self.ema_sharpness_gap is not None:
            out["ema_sharpness_gap"] = self.ema_sharpness_gap
        if per_layer:
            out.update({f"cond_A/{k}": v for k, v in self.cond_A.items()})
            out.update({f"perturbation_norm/{k}": v for k, v in self.perturbation_norms.items()})
        return out


def condition_number(A: Tensor) -> float:
    """``sigma_max(A) / sigma_min(A)`` (inf when A is rank deficient), in at least float32."""
    sv = torch.linalg.svdvals(A.detach().to(compute_dtype(A)))
    smin = float(sv[-1])
    return float(sv[0]) / smin if smin > 0 else math.inf


class _LoRARuleMixin:
    """Layer discovery and diagnostics shared by the three LoRA rules."""

    name: ClassVar[str]

    def _init_lora(self) -> None:
        self._layers: list[LoRAFactors] = []
        # what the realised-perturbation norm of the last step needs; evaluated in diagnostics()
        # only, so that a step pays nothing for it: (E used, float64 Grams A A^T, scalings)
        self._realised: tuple[list[Tensor | None], list[Tensor], list[float]] | None = None
        self._last_gap: float | None = None
        self._cache_key: tuple[int, ...] | None = None
        self._cache: tuple[list[LoRAFactors], list[int], list[int]] | None = None

    def _match_layers(
        self, model: nn.Module, named: Sequence[tuple[str, nn.Parameter]]
    ) -> tuple[list[LoRAFactors], list[int], list[int]]:
        """The trained LoRA layers and the positions of their A and B in ``named``.

        Cached while the model and its list of trained parameters stay the same objects: walking
        every module each step costs about as much as the pseudo-inverses on a small model. Adding
        adapters, switching peft adapters or freezing a factor changes that list.
        """
        key = (id(model), *(id(p) for _, p in named))
        if key == self._cache_key and self._cache is not None:
            return self._cache
        pos = {id(p): i for i, (_, p) in enumerate(named)}
        layers = [f for f in lora_layers(model) if id(f.A) in pos and id(f.B) in pos]
        if not layers:
            raise UserError(
                f"rule {self.name!r} found no trainable LoRA layer; add adapters with "
                "landscape.optim.add_lora(model, ...) or peft's get_peft_model first"
            )
        self._layers = layers
        self._cache_key = key
        self._cache = (layers, [pos[id(f.A)] for f in layers], [pos[id(f.B)] for f in layers])
        return self._cache

    def diagnostics(self, model: nn.Module | None = None) -> LoRADiagnostics:
        """cond(A) per layer (now), the realised perturbation norm of the last step, the last EMA gap.

        ``model``: read the layers from it (default: the layers of the last step).
        """
        layers = lora_layers(model, trainable_only=True) if model is not None else self._layers
        with torch.no_grad():
            conds = {f.name: condition_number(f.A) for f in layers}
        norms: dict[str, float] = {}
        total = 0.0
        if self._realised is not None and len(self._realised[0]) == len(self._layers):
            E, grams, scalings = self._realised
            values = realised_norms([f.A for f in self._layers], E, scalings, grams).tolist()
            norms = {f.name: v for f, v in zip(self._layers, values, strict=True)}
            total = math.sqrt(sum(v * v for v in values))
        return LoRADiagnostics(conds, total, norms, self._last_gap)


class LoRAGradient(_LoRARuleMixin, GradientRule):
    """Plain LoRA: the ordinary gradient of the adapters (rule ``lora``; base optimizer AdamW).

    The same as ``adamw`` on a model whose only trained parameters are LoRA factors, but it checks
    that LoRA layers are there and offers :meth:`diagnostics` (cond(A)) for comparison with
    ``fmlora``/``efmlora``. Cost: 1 forward + 1 backward.
    """

    name = "lora"
    cost = "1F+1B"

    def __init__(self, *, seed: int = 0) -> None:
        super().__init__(seed=seed)
        self._init_lora()

    def _compute(self, step: Step) -> Tensor:
        self._match_layers(step.model, step.named)
        value, grads = step.gradient()
        write_grads(step.params, grads)
        return value


class _FlatLoRABase(_LoRARuleMixin, PerturbationRule):
    """rho, its warm-up/schedule, and the normalisation option of FMLoRA and EFMLoRA."""

    data_parallel = False  # the flat-LoRA perturbations are not all-reduced yet

    def __init__(
        self,
        rho: float = 0.05,
        *,
        normalization: str = "layer",
        rho_warmup: int = 0,
        rho_schedule: RhoSchedule | None = None,
        seed: int = 0,
    ) -> None:
        if not (isinstance(rho, int | float) and math.isfinite(rho) and rho >= 0):
            raise UserError(f"rho must be a non-negative number, got {rho!r}")
        if isinstance(rho_warmup, bool) or not isinstance(rho_warmup, int) or rho_warmup < 0:
            raise UserError(f"rho warm-up must be a non-negative integer, got {rho_warmup!r}")
        _check_normalization(normalization)
        super().__init__(rho, rho_warmup=rho_warmup, rho_schedule=rho_schedule, seed=seed)
        self.normalization = normalization
        self._init_lora()

    def _terms(
        self,
        layers: Sequence[LoRAFactors],
        grads_A: Sequence[Tensor | None],
        grads_B: Sequence[Tensor | None],
        rho: float,
    ) -> _Terms:
        return _flat_lora_terms(
            [f.A for f in layers],
            [f.B for f in layers],
            grads_A,
            grads_B,
            [f.scaling for f in layers],
            rho,
            self.normalization,
        )


class FMLoRA(_FlatLoRABase):
    """FMLoRA (arXiv 2508.00522, Eqs. 12, 13, 15): all gradients at ``B + E_B``, A unperturbed.

    Pass 1 takes LoRA's gradients at theta; Eq. 12 estimates the full-space gradient from them,
    Eq. 13 forms ``Ebar_W = rho G_hat / ||G_hat||`` and Eq. 15 moves it to B,
    ``E_B = (1/s) Ebar_W A^+``. Pass 2 takes the gradient of every trained parameter at
    ``B + E_B`` (the same dropout masks; BatchNorm statistics untouched). Returns the loss at theta.

    Defaults: rho = 0.05 per layer (the paper's VizWiz value; 0.2 for ScienceQA and 0.6 for GLUE in
    the seed; the built-in LM trains stably with it), ``normalization="layer"`` (see
    ``docs/lora.md``). Cost: 2 forward + 2 backward + two small pseudo-inverses per layer.
    """

    name = "fmlora"
    cost = "2F+2B + r x r pseudo-inverses per layer"

    def _compute(self, step: Step) -> Tensor:
        layers, _, _ = self._match_layers(step.model, step.named)
        As, Bs = [f.A for f in layers], [f.B for f in layers]
        rng = step.rng_state()
        with torch.enable_grad():
            value = step.loss(step.outputs(), step.targets)
            grads = torch.autograd.grad(value, As + Bs, allow_unused=True)
        k = len(layers)
        terms = self._terms(layers, grads[:k], grads[k:], self.current_rho())
        del grads
        E = terms.E
        self._realised = (list(E), terms.gram_A, [f.scaling for f in layers])
        with step.perturbed([e.to(b.dtype) for e, b in zip(E, Bs, strict=True)], rng, params=Bs):
            _, perturbed = step.gradient()
        write_grads(step.params, perturbed)
        return value.detach()


class EFMLoRA(_FlatLoRABase):
    """EFMLoRA (arXiv 2508.00522, Sec. "Efficient FMLoRA"): FMLoRA with an EMA of past perturbations.

    Step t (one forward + one backward):

    1. ``B <- B + E_{t-1}`` (the EMA; ``E_0 = 0``, so the first step is plain LoRA);
    2. gradients of every trained parameter there; they are the step's gradients;
    3. ``E_B^t`` from the same gradients by Eqs. 12 -> 13 -> 15 (with the perturbed B, the point
       at which they were taken);
    4. B restored; ``E_t = (1 - beta) E_{t-1} + beta E_B^t``.

    ``ema_new_weight`` is the paper's beta: the weight of the **new** perturbation. Near 1 means
    little smoothing (0.99, the paper's setting in most experiments and the default here, uses
    almost exactly the last step's perturbation, one step stale); near 0 means heavy smoothing
    (a long memory of old perturbations). Returns the loss at the perturbed point ``B + E_{t-1}``
    (the only point evaluated). :meth:`ema_sharpness_gap` measures ``|S_EMA - S_SAM|``.
    Cost: 1 forward + 1 backward + two small pseudo-inverses per layer; memory: one float64 EMA
    buffer (``self.ema[layer name]``, n x r) and one copy of B per layer.
    """

    name = "efmlora"
    cost = "1F+1B + r x r pseudo-inverses per layer"

    def __init__(
        self,
        rho: float = 0.05,
        *,
        ema_new_weight: float = 0.99,
        normalization: str = "layer",
        rho_warmup: int = 0,
        rho_schedule: RhoSchedule | None = None,
        seed: int = 0,
    ) -> None:
        if not (isinstance(ema_new_weight, int | float) and 0.0 < ema_new_weight <= 1.0):
            raise UserError(f"ema_new_weight (the paper's beta) must be in (0, 1], got {ema_new_weight!r}")
        super().__init__(
            rho, normalization=normalization, rho_warmup=rho_warmup, rho_schedule=rho_schedule, seed=seed
        )
        self.ema_new_weight = float(ema_new_weight)
        self.ema: dict[str, Tensor] = {}
        self._pending: dict[str, Tensor] | None = None

    def _ema_for(self, layers: Sequence[LoRAFactors]) -> list[Tensor | None]:
        """The EMA perturbation of each layer (``None`` before its first step)."""
        if self._pending is not None:
            names = {f.name for f in layers}
            unknown = sorted(set(self._pending) - names)
            if unknown:
                raise UserError(
                    f"EFMLoRA state has EMA buffers for layers {unknown[:3]} that the model does not have"
                )
            for f in layers:
                if f.name in self._pending:
                    buf = self._pending[f.name]
                    if tuple(buf.shape) != tuple(f.B.shape):
                        raise UserError(
                            f"EFMLoRA EMA buffer of {f.name!r} has shape {list(buf.shape)}, "
                            f"but its B has {list(f.B.shape)}"
                        )
                    self.ema[f.name] = buf.to(device=f.B.device, dtype=torch.float64).clone()
            self._pending = None
        return [self.ema.get(f.name) for f in layers]

    def _compute(self, step: Step) -> Tensor:
        layers, ia, ib = self._match_layers(step.model, step.named)
        params = step.params
        Bs = [f.B for f in layers]
        previous = self._ema_for(layers)
        saved = perturb_(
            Bs, [None if e is None else e.to(b.dtype) for e, b in zip(previous, Bs, strict=True)]
        )
        try:
            value, grads = step.gradient()
            # Eq. 12 at the point the gradients were taken: B is still perturbed here
            terms = self._terms(layers, [grads[i] for i in ia], [grads[i] for i in ib], self.current_rho())
        finally:
            restore_(Bs, saved)
        write_grads(params, grads)
        # A did not move during the step, so the Grams A A^T of this pass give ||s E_{t-1} A||
        self._realised = (previous, terms.gram_A, [f.scaling for f in layers])
        beta = self.ema_new_weight
        # E_t = (1 - beta) E_{t-1} + beta E_B^t, as the paper writes it; float64 buffers (n x r, small)
        # and out of place, since self._realised still refers to E_{t-1}
        if all(old is not None for old in previous):
            olds = [old for old in previous if old is not None]
            updated = torch._foreach_add(torch._foreach_mul(olds, 1.0 - beta), terms.E, alpha=beta)
        else:
            updated = [
                new * beta if old is None else old * (1.0 - beta) + new * beta
                for old, new in zip(previous, terms.E, strict=True)
            ]
        for f, e in zip(layers, updated, strict=True):
            self.ema[f.name] = e
        return value

    def ema_sharpness_gap(
        self, model: nn.Module, inputs: Any, targets: Any, loss_fn: LossLike = "cross_entropy"
    ) -> dict[str, float]:
        """``|S_EMA - S_SAM|`` on a batch (Theorem 2 and App. D.1 of arXiv 2508.00522).

        ``S_EMA = L(B + E_ema) - L(B)`` with the EMA perturbation the next step would use, and
        ``S_SAM = L(B + E_B) - L(B)`` with the fresh FMLoRA perturbation from the gradient at B (at
        the current rho). Costs 3 forward + 1 backward; leaves parameters, ``p.grad``, BatchNorm
        statistics, the global RNG and the rule's state (except the reported gap) as they were.
        Returns ``{"s_ema", "s_sam", "gap"}``.
        """
        named = trained_parameters(model)
        layers, _, _ = self._match_layers(model, named)
        loss = as_loss(loss_fn)
        As, Bs = [f.A for f in layers], [f.B for f in layers]
        rng = RngState(As[0].device)
        try:
            with frozen_norm_statistics(model):
                with torch.enable_grad():
                    value = loss(unwrap_output(model(inputs)), targets)
                    grads = torch.autograd.grad(value, As + Bs, allow_unused=True)
                k = len(layers)
                fresh = self._terms(layers, grads[:k], grads[k:], self.current_rho()).E
                losses = []
                for E in (self._ema_for(layers), fresh):
                    saved = perturb_(
                        Bs, [None if e is None else e.to(b.dtype) for e, b in zip(E, Bs, strict=True)]
                    )
                    try:
                        rng.restore()
                        with torch.no_grad():
                            losses.append(float(loss(unwrap_output(model(inputs)), targets)))
                    finally:
                        restore_(Bs, saved)
        finally:
            rng.restore()
        base = float(value.detach())
        s_ema, s_sam = losses[0] - base, losses[1] - base
        self._last_gap = abs(s_ema - s_sam)
        return {"s_ema": s_ema, "s_sam": s_sam, "gap": self._last_gap}

    def state_dict(self) -> dict[str, Any]:
        """Step, generator and the EMA buffers ``{"ema": {layer name: E}}``."""
        state = super().state_dict()
        ema = self._pending if self._pending is not None else self.ema
        state["ema"] = {k: v.detach().clone() for k, v in ema.items()}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned; the buffers attach to layers by name on the next step."""
        super().load_state_dict(state)
        self.ema = {}
        self._pending = {k: v.detach().clone() for k, v in state.get("ema", {}).items()}
