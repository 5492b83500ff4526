"""The gradient-noise trace tr(V) against a dense loop of per-sample autograd gradients.

tr(V) = (1/N) sum_i ||g_i - g_bar||^2 over the samples with a counted target, g_i the gradient of
sample i's mean loss over its targets (Luo, Harandi, Phung, Le 2025, arXiv 2509.18001).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from helpers import rel, tiny_case
from landscape.curvature.noise import (
    NoiseTrace,
    gradient_noise_trace,
    noise_trace_memory,
)
from landscape.errors import UserError
from landscape.problem import Problem

KINDS = ["mlp", "cnn", "lm", "mse"]


def case(kind: str) -> tuple[nn.Module, Tensor, Tensor, str]:
    """A built-in float64 model and its data; the LM has ignored targets, one sample none at all."""
    model, (x, y), loss = tiny_case(kind, seed=1, n=28)
    if kind == "lm":
        y = y.clone()
        y[0, :3] = -100
        y[2, :] = -100
        y[4, 1] = -100
    return model, x, y, loss


def sample_loss(model: nn.Module, x: Tensor, y: Tensor, loss: str) -> Tensor:
    out = model(x)
    if loss == "cross_entropy":
        return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1), ignore_index=-100)
    return F.mse_loss(out, y.reshape(out.shape))


def dense_noise_trace(
    model: nn.Module, x: Tensor, y: Tensor, loss: str, names: list[str] | None = None
) -> float:
    """The definition, one sample at a time with plain autograd."""
    params = [p for n, p in model.named_parameters() if names is None or n in names]
    rows = []
    for i in range(len(y)):
        if loss == "cross_entropy" and bool((y[i] == -100).all()):
            continue  # no counted target: no loss
        grads = torch.autograd.grad(sample_loss(model, x[i : i + 1], y[i : i + 1], loss), params)
        rows.append(torch.cat([g.reshape(-1) for g in grads]))
    G = torch.stack(rows)
    return float(((G - G.mean(0)) ** 2).sum(1).mean())


@pytest.mark.parametrize("kind", KINDS)
def test_exact_equals_the_dense_loop(kind):
    model, x, y, loss = case(kind)
    reference = dense_noise_trace(model, x, y, loss)
    before = [p.detach().clone() for p in model.parameters()]
    problem = Problem(model, (x, y), loss, batch_size=5)  # chunks across batches
    results = [gradient_noise_trace(problem, method="exact", chunk_size=c) for c in (1, 3, None)]
    for result in results:
        assert result.method == "exact" and result.stderr == 0.0
        assert result.estimate == pytest.approx(reference, rel=1e-11)
        assert result.num_samples == len(y) - (1 if kind == "lm" else 0)
    assert [r.chunk_size for r in results] == [1, 3, 5]
    assert all(torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))


def test_parameter_subset_and_float32():
    model, x, y, loss = case("lm")
    names = [n for n, _ in model.named_parameters() if n.startswith("blocks.0.attn")]
    assert names
    reference = dense_noise_trace(model, x, y, loss, names)
    subset = gradient_noise_trace(Problem(model, (x, y), loss, params="blocks.0.attn"), method="exact")
    assert subset.estimate == pytest.approx(reference, rel=1e-11)
    single = gradient_noise_trace(Problem(model, (x, y), loss, dtype=torch.float32), method="exact")
    assert single.estimate == pytest.approx(dense_noise_trace(model, x, y, loss), rel=1e-4)


class KeywordLM(nn.Module):
    """A transformer called with keyword inputs (as Hugging Face models are)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, input_ids: Tensor) -> Tensor:
        return self.inner(input_ids)


def test_dict_inputs():
    model, x, y, loss = case("lm")
    reference = dense_noise_trace(model, x, y, loss)
    problem = Problem(KeywordLM(model), ({"input_ids": x}, y), loss, batch_size=3)
    assert gradient_noise_trace(problem, method="exact").estimate == pytest.approx(reference, rel=1e-11)
    sketch = gradient_noise_trace(problem, method="sketch", num_probes=16)
    assert sketch.method == "sketch" and sketch.num_samples == len(y) - 1


@pytest.mark.parametrize("kind", ["mlp", "cnn", "lm"])
def test_sketch_is_within_its_standard_error(kind):
    model, x, y, loss = case(kind)
    problem = Problem(model, (x, y), loss, batch_size=7)
    exact = gradient_noise_trace(problem, method="exact").estimate
    sketch = gradient_noise_trace(problem, method="sketch", num_probes=160, seed=2)
    assert sketch.num_probes == 160 and len(sketch.samples) == 160
    assert 0 < sketch.stderr < 0.25 * exact
    assert abs(sketch.estimate - exact) <= 3.5 * sketch.stderr
    # the per-probe values are unbiased samples: their mean is the estimate
    assert sketch.estimate == pytest.approx(sum(sketch.samples) / 160, rel=1e-12)


def test_sketch_standard_error_is_calibrated():
    """Over independent seeds the errors scatter as their standard errors say."""
    model, x, y, loss = case("mlp")
    problem = Problem(model, (x, y), loss)
    exact = gradient_noise_trace(problem, method="exact").estimate
    z = torch.tensor(
        [
            (r.estimate - exact) / r.stderr
            for r in (
                gradient_noise_trace(problem, method="sketch", num_probes=40, seed=s) for s in range(24)
            )
        ]
    )
    assert abs(float(z.mean())) < 0.8 and 0.5 < float(z.std()) < 1.5


def test_probes_do_not_depend_on_the_block_size_and_repeat_with_the_seed():
    model, x, y, loss = case("cnn")
    problem = Problem(model, (x, y), loss)
    wide = gradient_noise_trace(problem, method="sketch", num_probes=10, seed=4)
    one_bytes = noise_trace_memory(problem, "sketch")
    narrow = gradient_noise_trace(problem, method="sketch", num_probes=10, seed=4, memory_budget=one_bytes)
    assert narrow.memory_bytes == one_bytes < wide.memory_bytes
    assert narrow.samples == pytest.approx(wide.samples, rel=1e-12)
    assert gradient_noise_trace(problem, method="sketch", num_probes=10, seed=5).samples != wide.samples


def test_auto_chooses_by_memory_and_reports_it():
    model, x, y, loss = case("mlp")
    problem = Problem(model, (x, y), loss)
    P = problem.num_params
    assert noise_trace_memory(problem, "exact", 1) >= 8 * P + P * 8
    assert noise_trace_memory(problem, "exact", 4) > noise_trace_memory(problem, "exact", 1)
    assert noise_trace_memory(problem, "sketch") == 16 * P
    roomy = gradient_noise_trace(problem)
    assert roomy.method == "exact" and roomy.chunk_size == len(y)
    assert roomy.memory_bytes == noise_trace_memory(problem, "exact", len(y))
    tight = gradient_noise_trace(problem, memory_budget=noise_trace_memory(problem, "exact", 1) - 1)
    assert tight.method == "sketch" and tight.num_passes == tight.num_probes > 1
    assert isinstance(tight, NoiseTrace) and tight.to_dict()["method"] == "sketch"
    assert roomy.to_dict()["stderr"] == 0.0 and roomy.to_dict()["samples"] is None


def test_bad_arguments_are_user_errors():
    model, x, y, loss = case("mlp")
    problem = Problem(model, (x, y), loss)
    with pytest.raises(UserError, match="unknown noise-trace method"):
        gradient_noise_trace(problem, method="dense")
    with pytest.raises(UserError, match="at least one probe"):
        gradient_noise_trace(problem, method="sketch", num_probes=0)
    with pytest.raises(UserError, match="chunk size must be positive"):
        gradient_noise_trace(problem, method="exact", chunk_size=0)
    with pytest.raises(UserError, match="memory budget must be positive"):
        gradient_noise_trace(problem, memory_budget=0)


def test_the_mean_of_equal_count_samples_is_the_problem_gradient():
    """g_bar is the problem's full-data gradient when every sample counts alike (here: exact
    tr(V) = mean ||g_i||^2 - ||grad L||^2 with the problem's own gradient)."""
    model, x, y, loss = case("mlp")
    problem = Problem(model, (x, y), loss)
    g = problem.gradient()
    squares = 0.0
    for i in range(len(y)):
        grads = torch.autograd.grad(
            sample_loss(model, x[i : i + 1], y[i : i + 1], loss), list(model.parameters())
        )
        squares += float(sum((t**2).sum() for t in grads))
    expected = squares / len(y) - float(g @ g)
    assert rel(gradient_noise_trace(problem, method="exact").estimate, expected) < 1e-10


class BranchingLM(nn.Module):
    """A transformer whose forward branches on its input's values (as Hugging Face GPT-2 does on
    its attention mask), which ``torch.func.vmap`` refuses."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: Tensor) -> Tensor:
        if bool((x >= 0).all()):  # data-dependent control flow: always true here
            return self.inner(x)
        return self.inner(x.clamp_min(0))  # pragma: no cover


def test_a_model_that_branches_on_its_data_gets_the_same_values_by_a_loop():
    from landscape.curvature.noise import m_sharpness

    model, x, y, loss = case("lm")
    branching = BranchingLM(model)
    with pytest.raises(RuntimeError, match="vmap"):
        torch.func.vmap(branching)(x.unsqueeze(1))
    plain = Problem(model, (x, y), loss, batch_size=5)
    looped = Problem(branching, (x, y), loss, batch_size=5)
    assert gradient_noise_trace(looped, method="exact").estimate == pytest.approx(
        dense_noise_trace(model, x, y, loss), rel=1e-11
    )
    # looped, each sample's gradient is folded as it comes: a chunk of 5 holds what a chunk of 1 does
    from landscape.curvature.memory import torch_peak_bytes

    peaks = [
        torch_peak_bytes(lambda c=c: gradient_noise_trace(looped, method="exact", chunk_size=c))[1]
        for c in (1, 5)
    ]
    assert peaks[1] <= 1.1 * peaks[0]
    a = gradient_noise_trace(plain, method="sketch", num_probes=8, seed=3)
    b = gradient_noise_trace(looped, method="sketch", num_probes=8, seed=3)
    assert b.samples == pytest.approx(a.samples, rel=1e-10)
    sa = m_sharpness(plain, [1, 3], draws=2, seed=1)
    sb = m_sharpness(looped, [1, 3], draws=2, seed=1)
    assert sb.estimates == pytest.approx(sa.estimates, rel=1e-10)
