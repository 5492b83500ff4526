"""Loss-landscape slices: filter normalisation, curvature along a slice against the engine, paths."""

from __future__ import annotations

import json

import torch

from cli.main import main
from helpers import tiny_case
from landscape.curvature.operators import HessianOperator
from landscape.problem import Problem
from landscape.surface import compute_surface, filter_normalized_direction, loss_line


def test_filter_normalisation_matches_parameter_filters():
    model, data, loss = tiny_case("cnn")
    problem = Problem(model, data, loss, dtype=torch.float64)
    d = filter_normalized_direction(problem.params, torch.Generator().manual_seed(0))
    for name, p in problem.params.items():
        if p.dim() <= 1:
            assert torch.count_nonzero(d[name]) == 0
        else:
            got = d[name].reshape(p.shape[0], -1).norm(dim=1)
            want = p.reshape(p.shape[0], -1).norm(dim=1)
            assert torch.allclose(got, want, rtol=1e-12)


def test_second_difference_along_slice_is_directional_curvature():
    model, data, loss = tiny_case("lm")
    problem = Problem(model, data, loss, dtype=torch.float64)
    d = filter_normalized_direction(problem.params, torch.Generator().manual_seed(1), ignore_1d=False)
    h = 1e-3
    lm, l0, lp = loss_line(problem, d, [-h, 0.0, h])
    assert l0 == problem.loss_value()
    dv = problem.flatten(d)
    curvature = float(dv @ HessianOperator(problem).matvec(dv))
    assert abs((lp - 2 * l0 + lm) / h**2 - curvature) < 1e-4 * abs(curvature) + 1e-8


def test_surface_shapes_seed_and_path_endpoints():
    model, data, loss = tiny_case("mlp")
    problem = Problem(model, data, loss, dtype=torch.float64)
    other = {n: p + 0.1 for n, p in problem.params.items()}
    a = compute_surface(
        problem, other=other, line_steps=5, plane_steps=3, path_steps=5, path_range=(0.0, 1.0), seed=4
    )
    b = compute_surface(
        problem, other=other, line_steps=5, plane_steps=3, path_steps=5, path_range=(0.0, 1.0), seed=4
    )
    assert a.to_dict() == b.to_dict()
    assert len(a.line.losses) == 5 and len(a.plane.losses) == 3 and len(a.plane.losses[0]) == 3
    assert a.plane.losses[1][1] == a.center_loss == a.line.losses[2]
    assert a.path.losses[0] == a.center_loss
    assert abs(a.path.losses[-1] - problem.loss_value(other)) < 1e-12


def test_surface_cli_writes_json_and_figures(tmp_path, capsys):
    out = tmp_path / "s"
    code = main(
        ["surface", "--model", "mlp", "--samples", "64", "--steps", "5", "--grid", "3", "--out", str(out)]
    )
    assert code == 0, capsys.readouterr().err
    payload = json.loads((out / "surface.json").read_text())
    assert payload["line"] and payload["plane"] and payload["context"]["model"] == "mlp"
    for name in ("surface-line.png", "surface-plane.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
