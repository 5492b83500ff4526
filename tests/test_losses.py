"""The loss objects against the formulas they replace and against float64 autograd references."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from landscape.errors import UserError
from landscape.losses import (
    IGNORE_INDEX,
    BinaryCrossEntropy,
    CallableLoss,
    CrossEntropy,
    Loss,
    MeanSquaredError,
    NegativeLogLikelihood,
    as_loss,
)


def lm_batch(dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 7, generator=gen, dtype=dtype)
    tokens = torch.randint(0, 7, (3, 5), generator=gen)
    tokens[0, 1] = tokens[2, 4] = IGNORE_INDEX
    return logits, tokens


def regression_batch(dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(4, 3, generator=gen, dtype=dtype), torch.randn(4, 3, generator=gen, dtype=dtype)


def dense_output_hessian(loss: Loss, outputs: Tensor, targets: Tensor) -> Tensor:
    """The Hessian of ``loss.sum`` in the outputs as a dense [n, n] matrix (double-backward by hand)."""
    leaf = outputs.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(loss.sum(leaf, targets), leaf, create_graph=True)
    flat = grad.reshape(-1)
    rows = [torch.autograd.grad(flat[i], leaf, retain_graph=True)[0].reshape(-1) for i in range(flat.numel())]
    return torch.stack(rows)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sums_and_means_are_the_torch_formulas_bit_for_bit(dtype):
    logits, tokens = lm_batch(dtype)
    ce = CrossEntropy()
    flat_logits, flat_tokens = logits.reshape(-1, 7), tokens.reshape(-1)
    assert torch.equal(ce.sum(logits, tokens), F.cross_entropy(flat_logits, flat_tokens, reduction="sum"))
    assert torch.equal(ce.mean(logits, tokens), F.cross_entropy(flat_logits, flat_tokens))
    assert torch.equal(ce(logits, tokens), ce.mean(logits, tokens))
    assert ce.count(tokens) == 13
    outputs, values = regression_batch(dtype)
    mse = MeanSquaredError()
    assert torch.equal(mse.sum(outputs, values), F.mse_loss(outputs, values, reduction="sum"))
    assert torch.equal(mse.mean(outputs, values), F.mse_loss(outputs, values))
    assert mse.count(values) == 12


def test_generic_defaults_agree_with_the_closed_forms():
    """The autograd defaults of the base class (the extension point for new losses) against the
    closed forms of cross-entropy and mse, in float64."""

    class Generic(Loss):
        def __init__(self, inner: Loss) -> None:
            self.inner = inner

        def sum(self, outputs: Tensor, targets: Tensor) -> Tensor:
            return self.inner.sum(outputs, targets)

        def count(self, targets: Tensor) -> int:
            return self.inner.count(targets)

    for inner, (outputs, targets) in ((CrossEntropy(), lm_batch()), (MeanSquaredError(), regression_batch())):
        generic = Generic(inner)
        torch.testing.assert_close(
            generic.mean(outputs, targets), inner.mean(outputs, targets), rtol=1e-14, atol=0
        )
        torch.testing.assert_close(
            generic.output_gradient(outputs, targets),
            inner.output_gradient(outputs, targets),
            rtol=1e-12,
            atol=1e-15,
        )
        columns = torch.randn(
            2, *outputs.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2)
        )
        torch.testing.assert_close(
            generic.output_hessian_product(outputs, targets, columns),
            inner.output_hessian_product(outputs, targets, columns),
            rtol=1e-12,
            atol=1e-14,
        )


@pytest.mark.parametrize("name", ["cross_entropy", "mse"])
def test_output_hessian_product_matches_the_dense_double_backward_hessian(name):
    loss = as_loss(name)
    outputs, targets = lm_batch() if name == "cross_entropy" else regression_batch()
    H = dense_output_hessian(loss, outputs, targets)
    u = torch.randn(outputs.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(
        loss.output_hessian_product(outputs, targets, u).reshape(-1),
        H @ u.reshape(-1),
        rtol=1e-12,
        atol=1e-14,
    )
    if name == "cross_entropy":  # an ignored target contributes nothing
        assert torch.all(H.reshape(*outputs.shape, -1)[0, 1] == 0)


def test_callable_loss_counts_samples_and_sums_its_mean():
    fn = lambda o, t: ((o - t) ** 4).mean()  # noqa: E731
    loss = as_loss(fn)
    outputs, values = regression_batch()
    assert isinstance(loss, CallableLoss) and loss.count(values) == 4
    assert torch.equal(loss.mean(outputs, values), fn(outputs, values))
    assert torch.equal(loss.sum(outputs, values), fn(outputs, values) * 4)
    per_sample = loss.terms(outputs, values).per_sample()
    torch.testing.assert_close(per_sample, ((outputs - values) ** 4).mean(1), rtol=1e-14, atol=0)


def test_evaluate_gives_float64_sums_counts_and_accuracy():
    logits, tokens = lm_batch(torch.float32)
    sums = CrossEntropy().evaluate(logits, tokens)
    keep = tokens.reshape(-1) != IGNORE_INDEX
    expected = float(F.cross_entropy(logits.reshape(-1, 7).double(), tokens.reshape(-1), reduction="sum"))
    assert sums.loss_sum == expected and sums.count == 13
    assert sums.correct == int((logits.reshape(-1, 7).argmax(-1) == tokens.reshape(-1))[keep].sum())
    outputs, values = regression_batch(torch.float32)
    sums = MeanSquaredError().evaluate(outputs, values)
    assert sums.loss_sum == float(F.mse_loss(outputs.double(), values.double(), reduction="sum"))
    assert (sums.count, sums.correct) == (12, None)
    whole = MeanSquaredError().evaluate(outputs, torch.ones(4, 3, dtype=torch.long))  # integer targets
    assert whole.loss_sum == float(
        F.mse_loss(outputs.double(), torch.ones(4, 3, dtype=torch.float64), reduction="sum")
    )


def test_as_loss_accepts_names_objects_and_callables_and_rejects_the_rest():
    ce = CrossEntropy()
    assert as_loss(ce) is ce and isinstance(as_loss("mse"), MeanSquaredError)
    from landscape.optim import BatchLoss  # the former name still works

    assert isinstance(BatchLoss("cross_entropy"), CrossEntropy)
    with pytest.raises(ValueError, match="unknown loss 'nope'"):
        as_loss("nope")
    with pytest.raises(TypeError, match="name or a callable"):
        as_loss(3)  # type: ignore[arg-type]


def test_data_checks_name_the_problem():
    ce, mse = CrossEntropy(), MeanSquaredError()
    assert ce.prepare_targets(torch.tensor([1.0, 2.0]), torch.float32).dtype == torch.long
    with pytest.raises(UserError, match="integer class ids"):
        ce.prepare_targets(torch.tensor([0.5]), torch.float32)
    with pytest.raises(UserError, match="NaN or infinite"):
        mse.prepare_targets(torch.tensor([float("nan")]), torch.float32)
    assert mse.prepare_targets(torch.tensor([1, 2]), torch.float64).dtype == torch.float64
    with pytest.raises(UserError, match="labels out of range"):
        ce.check_outputs(torch.zeros(2, 3), [torch.tensor([0, 1]), torch.tensor([IGNORE_INDEX, 3])])
    with pytest.raises(UserError, match="do not match targets"):
        ce.check_outputs(torch.zeros(2, 3), [torch.tensor([0, 1, 2])])
    with pytest.raises(UserError, match="mse targets"):
        mse.check_outputs(torch.zeros(2, 3), [torch.zeros(2, 2)])
    ce.check_outputs(torch.zeros(2, 3), [torch.tensor([0, IGNORE_INDEX]), torch.tensor([2, 1])])


def test_one_ignore_index():
    import landscape.data
    import landscape.problem

    assert landscape.data.IGNORE_INDEX is IGNORE_INDEX and landscape.problem.IGNORE_INDEX is IGNORE_INDEX


# --------------------------------------------------------------------- every kind of loss
def _case(name: str):
    """(loss as the user gives it, outputs, targets, reference mean written with torch alone)."""
    gen = torch.Generator().manual_seed(4)
    logits, tokens = lm_batch()
    weight = torch.rand(7, generator=gen, dtype=torch.float64) + 0.2
    if name == "cross_entropy":
        return "cross_entropy", logits, tokens, lambda o, t: F.cross_entropy(o.reshape(-1, 7), t.reshape(-1))
    if name == "ce-module":
        module = nn.CrossEntropyLoss(weight=weight, label_smoothing=0.15)
        return module, logits, tokens, lambda o, t: module(o.reshape(-1, 7), t.reshape(-1))
    if name == "ce-ignore-2":
        module = nn.CrossEntropyLoss(ignore_index=2, label_smoothing=0.1)
        t = tokens.clamp_min(0)
        return module, logits, t, lambda o, t: module(o.reshape(-1, 7), t.reshape(-1))
    if name == "nll":
        return "nll", logits.log_softmax(-1), tokens, lambda o, t: F.nll_loss(o.reshape(-1, 7), t.reshape(-1))
    if name == "nll-module":
        module = nn.NLLLoss(weight=weight)
        return module, logits.log_softmax(-1), tokens, lambda o, t: module(o.reshape(-1, 7), t.reshape(-1))
    outputs, values = regression_batch()
    probs = torch.rand(outputs.shape, generator=gen, dtype=torch.float64)
    if name == "mse":
        return "mse", outputs, values, F.mse_loss
    if name == "bce":
        return "bce", outputs, probs, F.binary_cross_entropy_with_logits
    if name == "bce-module":
        module = nn.BCEWithLogitsLoss(
            weight=torch.rand(3, dtype=torch.float64, generator=gen), pos_weight=torch.tensor([0.5, 2.0, 1.0])
        )
        return module, outputs, probs, module
    if name == "huber-module":
        module = nn.HuberLoss(delta=0.7)
        return module, outputs, values, module
    if name == "callable":
        fn = lambda o, t: ((o - t) ** 4).mean() + (o.tanh() * t).mean()  # noqa: E731
        return fn, outputs, values, fn
    raise ValueError(name)


KINDS = [
    "cross_entropy",
    "ce-module",
    "ce-ignore-2",
    "nll",
    "nll-module",
    "mse",
    "bce",
    "bce-module",
    "huber-module",
    "callable",
]


@pytest.mark.parametrize("kind", KINDS)
def test_every_loss_against_its_torch_reference(kind):
    """Mean, sum / count, output gradient, output Hessian and the per-sample split of every kind
    of loss against torch's own function and float64 double-backward."""
    given, outputs, targets, reference = _case(kind)
    loss = as_loss(given)
    mean = reference(outputs, targets)
    torch.testing.assert_close(loss.mean(outputs, targets), mean, rtol=1e-14, atol=0)
    torch.testing.assert_close(loss.sum(outputs, targets) / loss.count(targets), mean, rtol=1e-13, atol=0)
    leaf = outputs.detach().clone().requires_grad_(True)
    (r,) = torch.autograd.grad(reference(leaf, targets), leaf)
    torch.testing.assert_close(loss.output_gradient(outputs, targets), r, rtol=1e-12, atol=1e-15)
    H = torch.autograd.functional.hessian(
        lambda f: reference(f.reshape(outputs.shape), targets), outputs.reshape(-1)
    )
    U = torch.randn(2, *outputs.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    got = loss.output_hessian_product(outputs, targets, U).reshape(2, -1)
    # the output Hessian of the *sum* is count times that of the mean (H is symmetric)
    torch.testing.assert_close(got, U.reshape(2, -1) @ (H * loss.count(targets)), rtol=1e-11, atol=1e-13)
    terms = loss.terms(outputs, targets)
    torch.testing.assert_close(terms.mean(), mean, rtol=1e-13, atol=0)
    torch.testing.assert_close(
        terms.weighted(torch.ones(outputs.shape[0], dtype=torch.float64)), mean, rtol=1e-13, atol=0
    )
    for i in range(outputs.shape[0]):
        if bool(loss.sample_has_targets(targets[i : i + 1]).all()):
            torch.testing.assert_close(
                terms.per_sample()[i],
                reference(outputs[i : i + 1], targets[i : i + 1]).detach(),
                rtol=1e-12,
                atol=0,
            )


def test_nll_has_no_output_curvature_and_module_options_are_kept():
    assert torch.equal(
        as_loss("nll").output_hessian_product(*lm_batch(), torch.ones(3, 5, 7)), torch.zeros(3, 5, 7)
    )
    weight = torch.rand(7, dtype=torch.float64)
    ce = as_loss(nn.CrossEntropyLoss(weight=weight, ignore_index=3, label_smoothing=0.2))
    assert isinstance(ce, CrossEntropy) and ce.ignore_index == 3 and ce.label_smoothing == 0.2
    assert torch.equal(ce.weight, weight)
    tokens = lm_batch()[1].clamp_min(0)
    assert ce.count(tokens) == pytest.approx(float(weight[tokens[tokens != 3]].sum()), rel=1e-15)
    assert isinstance(as_loss(nn.BCEWithLogitsLoss()), BinaryCrossEntropy)
    assert isinstance(as_loss(nn.NLLLoss()), NegativeLogLikelihood)
    assert isinstance(as_loss(nn.SoftMarginLoss()), CallableLoss)  # no known form: a callable
    with pytest.raises(UserError, match="reduction='mean'"):
        as_loss(nn.CrossEntropyLoss(reduction="sum"))
    with pytest.raises(UserError, match="bce targets"):
        as_loss("bce").prepare_targets(torch.tensor([0.0, 2.0]), torch.float32)
    with pytest.raises(ValueError, match="needs the model"):
        as_loss("model")
    with pytest.raises(UserError, match="Hugging Face"):
        as_loss("model", model=nn.Linear(2, 2))
