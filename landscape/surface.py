"""Loss-landscape slices: 1D lines and 2D planes around a checkpoint, and the path between two.

Directions are random Gaussian tensors with *filter normalisation* (Li, Xu, Taylor, Studer &
Goldstein, "Visualizing the Loss Landscape of Neural Nets", NeurIPS 2018, Sec. 4): every filter of a
weight tensor (a row of a linear layer's weight, an output channel of a convolution, a row of an
embedding) is rescaled to the norm of the same filter of theta,

    d_{i,j} <- d_{i,j} / ||d_{i,j}|| * ||theta_{i,j}||,

so the slice is comparable across networks and scale-invariant layers. As in the paper's
``--xignore biasbn`` setting, one-dimensional tensors (biases, LayerNorm/BatchNorm parameters) get a
zero direction by default. Unlike the ``loss-landscapes`` package, the directions are *not*
rescaled to the model norm afterwards: alpha = 1 means one filter norm along every filter.

The slice is L(theta + alpha d1 [+ beta d2]) on the whole evaluation data (the problem's mean loss).
The path between two checkpoints is L((1 - t) theta_a + t theta_b), t in [-0.25, 1.25] by default.

Sizes are bounded (:mod:`landscape.bounds`): at most 2001 points along a line or path, 201 per
axis of a plane (40,401 loss evaluations), a half-width in (0, 100] filter norms. Each point is
one full-data loss evaluation, one forward pass per chunk of the data; :func:`compute_surface`
states the number of both before it starts (a :class:`~landscape.bounds.JobSize` message).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor

from landscape.bounds import SEED, SLICE_DISTANCE, SLICE_GRID, SLICE_STEPS, JobSize
from landscape.errors import UserError
from landscape.problem import Problem

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Slice1D:
    """L along a line: ``alphas`` and ``losses`` (``losses[i] = L(theta + alphas[i] d)``)."""

    alphas: list[float]
    losses: list[float]
    kind: str = "random filter-normalised direction"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)


@dataclass(frozen=True)
class Slice2D:
    """L on a plane: ``losses[i][j] = L(theta + alphas[i] d1 + betas[j] d2)``."""

    alphas: list[float]
    betas: list[float]
    losses: list[list[float]]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)


@dataclass(frozen=True)
class Surface:
    """Every slice computed for one checkpoint (``None`` when not asked for)."""

    center_loss: float
    line: Slice1D | None = None
    plane: Slice2D | None = None
    path: Slice1D | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)


def filter_normalized_direction(
    params: dict[str, Tensor], generator: torch.Generator, ignore_1d: bool = True
) -> dict[str, Tensor]:
    """A Gaussian direction with each filter rescaled to the norm of theta's filter (Li et al. 2018).

    Filters are slices along dim 0 (output units / channels). One-dimensional tensors get zero when
    ``ignore_1d`` (the paper's ``biasbn`` setting), else the tensor-wise normalisation.
    """
    direction = {}
    for name, p in params.items():
        # drawn on the host (the generator's device), so a seed gives the same slices on every device
        d = torch.randn(p.shape, generator=generator, dtype=torch.float64).to(device=p.device, dtype=p.dtype)
        if p.dim() <= 1:
            if ignore_1d:
                d = torch.zeros_like(p)
            else:
                d = d * (p.norm() / d.norm().clamp_min(1e-30))
        else:
            flat_d = d.reshape(p.shape[0], -1)
            flat_p = p.reshape(p.shape[0], -1)
            scale = flat_p.norm(dim=1, keepdim=True) / flat_d.norm(dim=1, keepdim=True).clamp_min(1e-30)
            d = (flat_d * scale).reshape(p.shape)
        direction[name] = d
    return direction


def _shifted(problem: Problem, steps: list[tuple[float, dict[str, Tensor]]]) -> dict[str, Tensor]:
    out = {}
    for name, p in problem.params.items():
        value = p.clone()
        for coeff, direction in steps:
            if coeff:
                value = value + coeff * direction[name]
        out[name] = value
    return out


def _grid(distance: float, steps: int) -> list[float]:
    return [float(x) for x in torch.linspace(-distance, distance, steps, dtype=torch.float64)]


def slice_points(
    *, line: bool, plane: bool, path: bool, line_steps: int, plane_steps: int, path_steps: int
) -> int:
    """Loss evaluations of one :func:`compute_surface` call: the points of the line, the plane
    (its square) and the path, and the centre."""
    return 1 + line * line_steps + plane * plane_steps**2 + path * path_steps


def _size(points: int, problem: Problem, parts: list[str]) -> JobSize:
    passes = points * len(problem.batches)
    return JobSize(
        f"slices: {' + '.join(parts)} = {points} loss evaluations on {problem.num_samples} samples "
        f"({passes} forward passes)"
    )


def loss_line(problem: Problem, direction: dict[str, Tensor], alphas: list[float]) -> list[float]:
    """L(theta + alpha d) for each alpha (full-data mean loss)."""
    return [problem.loss_value(_shifted(problem, [(a, direction)])) for a in alphas]


def compute_surface(
    problem: Problem,
    *,
    line: bool = True,
    plane: bool = True,
    other: dict[str, Tensor] | None = None,
    distance: float = 1.0,
    line_steps: int = 41,
    plane_steps: int = 21,
    path_range: tuple[float, float] = (-0.25, 1.25),
    path_steps: int = 31,
    ignore_1d: bool = True,
    seed: int = 0,
    progress: Progress | None = None,
) -> Surface:
    """Compute the asked slices around ``problem.params``.

    Touches nothing: the slices evaluate copies of the parameters (the model's own parameters,
    modes, flags and the global RNG are left alone; directions come from their own generator).

    Args:
        problem: the checkpoint's model, loss and evaluation data.
        line / plane: compute the 1D line and the 2D plane (filter-normalised random directions).
        other: parameters of a second checkpoint (same names) for the interpolation path.
        distance: the slice spans [-distance, distance] in units of filter norms, in (0, 100].
        line_steps / plane_steps / path_steps: points per line, per axis of the plane and along
            the path (bounds: :data:`~landscape.bounds.SLICE_STEPS`, :data:`~landscape.bounds.SLICE_GRID`).
        seed: seeds the directions: the same seed gives the same slices.
        progress: called first with a :class:`~landscape.bounds.JobSize` (loss evaluations and
            forward passes), then with a label before each stage.

    Raises ``UserError`` naming the argument when a size, the distance or the seed is out of range.
    """
    report = progress or (lambda _label: None)
    SEED.check(seed, "seed")
    if line:
        SLICE_STEPS.check(line_steps, "line_steps")
    if plane:
        SLICE_GRID.check(plane_steps, "plane_steps")
    if line or plane:
        SLICE_DISTANCE.check(distance, "distance")
    if other is not None:
        SLICE_STEPS.check(path_steps, "path_steps")
    parts = [
        *([f"line {line_steps}"] if line else []),
        *([f"plane {plane_steps}x{plane_steps}"] if plane else []),
        *([f"path {path_steps}"] if other is not None else []),
        "centre 1",
    ]
    points = slice_points(
        line=line,
        plane=plane,
        path=other is not None,
        line_steps=line_steps,
        plane_steps=plane_steps,
        path_steps=path_steps,
    )
    report(_size(points, problem, parts))
    gen = torch.Generator().manual_seed(seed)
    d1 = filter_normalized_direction(problem.params, gen, ignore_1d)
    d2 = filter_normalized_direction(problem.params, gen, ignore_1d)
    line_res = plane_res = path_res = None
    if line:
        report("1D slice")
        alphas = _grid(distance, line_steps)
        line_res = Slice1D(alphas, loss_line(problem, d1, alphas))
    if plane:
        alphas = _grid(distance, plane_steps)
        losses = []
        for i, a in enumerate(alphas):
            report(f"2D slice, row {i + 1}/{len(alphas)}")
            losses.append([problem.loss_value(_shifted(problem, [(a, d1), (b, d2)])) for b in alphas])
        plane_res = Slice2D(alphas, list(alphas), losses)
    if other is not None:
        missing = set(problem.params) - set(other)
        if missing:
            raise UserError(f"the second checkpoint lacks parameter(s) {', '.join(sorted(missing)[:3])}")
        report("interpolation path")
        delta = {n: other[n].to(device=p.device, dtype=problem.dtype) - p for n, p in problem.params.items()}
        ts = [float(t) for t in torch.linspace(path_range[0], path_range[1], path_steps, dtype=torch.float64)]
        path_res = Slice1D(ts, loss_line(problem, delta, ts), kind="linear path theta_a -> theta_b")
    settings = {
        "distance": distance,
        "line_steps": line_steps,
        "plane_steps": plane_steps,
        "normalisation": "filter (Li et al. 2018)",
        "ignore_1d": ignore_1d,
        "seed": seed,
    }
    return Surface(problem.loss_value(), line_res, plane_res, path_res, settings)
