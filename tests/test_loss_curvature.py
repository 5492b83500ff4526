"""H, G and H_F of every kind of loss against dense float64 references on tiny models.

The references are written with torch's own loss functions (never landscape's): H by
reverse-over-reverse double-backward, G = J^T H_out J with the explicit Jacobian and the output
Hessian of the reference by double-backward, H_F = H - G.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from helpers import dense_ggn, dense_gradient, dense_hessian, rel
from landscape.curvature.operators import GGNOperator, HessianOperator, functional_hessian_operator
from landscape.losses import IGNORE_INDEX
from landscape.models import build_model
from landscape.problem import Problem


def _mlp(outputs: int) -> nn.Module:
    torch.manual_seed(0)
    return build_model("mlp", in_features=5, hidden=(6, 4), num_classes=outputs).double()


def _case(kind: str):
    """(model, x, y, loss as given, reference full-data mean (outputs, targets) -> scalar)."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(10, 5, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, 4, (10,), generator=gen)
    labels[3] = IGNORE_INDEX
    weight = torch.rand(4, generator=gen, dtype=torch.float64) + 0.3
    probs = torch.rand(10, 3, generator=gen, dtype=torch.float64)
    if kind == "bce":
        return _mlp(3), x, probs, "bce", F.binary_cross_entropy_with_logits
    if kind == "bce-module":
        module = nn.BCEWithLogitsLoss(pos_weight=torch.tensor([0.5, 2.0, 1.5], dtype=torch.float64))
        return _mlp(3), x, probs, module, module
    if kind == "nll":
        model = nn.Sequential(_mlp(4), nn.LogSoftmax(-1))
        return model, x, labels, "nll", F.nll_loss
    if kind == "nll-module":
        module = nn.NLLLoss(weight=weight)
        return nn.Sequential(_mlp(4), nn.LogSoftmax(-1)), x, labels, module, module
    if kind == "ce-module":
        module = nn.CrossEntropyLoss(weight=weight, label_smoothing=0.2)
        return _mlp(4), x, labels, module, module
    if kind == "huber-module":
        module = nn.HuberLoss(delta=0.3)
        return _mlp(2), x, probs[:, :2], module, module
    if kind == "callable":
        fn = lambda o, t: ((o - t) ** 2).mean() + 0.1 * (o**4).mean()  # noqa: E731
        return _mlp(3), x, probs, fn, fn
    raise ValueError(kind)


KINDS = ["bce", "bce-module", "nll", "nll-module", "ce-module", "huber-module", "callable"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("batch_size", [None, 3])
def test_h_g_and_hf_of_every_loss_match_dense_references(kind, batch_size):
    model, x, y, loss, reference = _case(kind)
    problem = Problem(model, (x, y), loss, batch_size=batch_size, dtype=torch.float64)
    H, G = dense_hessian(problem, x, y, reference), dense_ggn(problem, x, y, reference)
    assert rel(problem.gradient(), dense_gradient(problem, x, y, reference)) < 1e-12
    assert abs(problem.loss_value() - float(reference(problem.outputs(problem.params, x), y))) < 1e-13
    for method in ("reuse", "double-backward"):
        assert rel(HessianOperator(problem, method=method).to_dense(), H) < 1e-11
    assert rel(GGNOperator(problem).to_dense(), G) < 1e-11 or (
        kind.startswith("nll") and G.abs().max() < 1e-14
    )
    assert rel(functional_hessian_operator(problem).to_dense(), H - G) < 1e-10
    if kind.startswith("nll"):  # a loss linear in its inputs: G = 0 and H = H_F
        assert GGNOperator(problem).to_dense().abs().max() == 0


# ------------------------------------------------------------- a Hugging Face model's own loss
transformers = pytest.importorskip("transformers")

VOCAB = 11


def tiny_gpt2() -> nn.Module:
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=VOCAB,
        n_positions=8,
        n_embd=8,
        n_layer=1,
        n_head=2,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        attn_implementation="eager",
    )
    return transformers.GPT2LMHeadModel(config).double()


def _shifted_reference(out: Tensor, labels: Tensor) -> Tensor:
    """Position t predicts label t + 1 (written here with F.cross_entropy, not with landscape)."""
    return F.cross_entropy(
        out[:, :-1].reshape(-1, VOCAB), labels[:, 1:].reshape(-1), ignore_index=IGNORE_INDEX
    )


def test_model_loss_of_a_causal_lm_is_its_own_loss_and_has_dense_h_g_hf():
    model = tiny_gpt2()
    gen = torch.Generator().manual_seed(2)
    tokens = torch.randint(0, VOCAB, (3, 6), generator=gen)
    labels = tokens.clone()
    labels[1, 4] = IGNORE_INDEX
    with torch.no_grad():
        own = model(input_ids=tokens, labels=labels)
    problem = Problem(model, (tokens, labels), "model", dtype=torch.float64)
    # Hugging Face computes its loss in float32 (it upcasts the logits with .float())
    assert problem.loss_value() == pytest.approx(float(own.loss), rel=1e-6)
    assert problem.loss_value() == pytest.approx(float(_shifted_reference(own.logits, labels)), rel=1e-14)
    assert problem.num_targets == 3 * 5 - 1
    H, G = (
        dense_hessian(problem, tokens, labels, _shifted_reference),
        dense_ggn(problem, tokens, labels, _shifted_reference),
    )
    assert rel(HessianOperator(problem).to_dense(), H) < 1e-10
    assert rel(GGNOperator(problem).to_dense(), G) < 1e-10
    assert rel(functional_hessian_operator(problem).to_dense(), H - G) < 1e-9


@pytest.mark.parametrize("labels_kind", ["regression", "single", "multi"])
def test_model_loss_of_sequence_classifiers_follows_the_problem_type(labels_kind):
    torch.manual_seed(0)
    num_labels = 1 if labels_kind == "regression" else 3
    config = transformers.GPT2Config(
        vocab_size=VOCAB,
        n_positions=8,
        n_embd=8,
        n_layer=1,
        n_head=2,
        num_labels=num_labels,
        pad_token_id=0,
        attn_implementation="eager",
    )
    model = transformers.GPT2ForSequenceClassification(config).double().eval()
    gen = torch.Generator().manual_seed(3)
    tokens = torch.randint(1, VOCAB, (4, 5), generator=gen)
    if labels_kind == "regression":
        labels = torch.randn(4, generator=gen, dtype=torch.float64)
    elif labels_kind == "single":
        labels = torch.randint(0, 3, (4,), generator=gen)
    else:
        labels = torch.randint(0, 2, (4, 3), generator=gen).double()
    from landscape.losses import as_loss

    loss = as_loss("model", model=model)
    with torch.no_grad():
        own = model(input_ids=tokens, labels=labels)
        mine = loss(own.logits, labels)
    assert float(mine) == pytest.approx(float(own.loss), rel=1e-6)
