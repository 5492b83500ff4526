"""One-shot global magnitude pruning (Functional-SAM Fig. 5): masks, evaluation, ``landscape prune-eval``."""

from __future__ import annotations

import json

import pytest
import torch

from cli.main import main
from landscape.data import load_data
from landscape.errors import UserError
from landscape.models import build_model
from landscape.prune import global_magnitude_masks, parse_sparsities, prunable_parameters, prune_eval
from landscape.train import RunConfig, evaluate, train_run


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("prune") / "run"
    train_run(RunConfig(model="mlp", steps=80, lr=3e-3, checkpoint_every=0), out)
    return out


def test_masks_rank_all_tensors_together():
    small = torch.tensor([0.1, -0.2, 0.3, -0.4])
    large = torch.tensor([[1.0, -2.0], [3.0, -4.0]])
    masks, threshold = global_magnitude_masks([small, large], 0.5)
    # a per-layer rule would prune half of each; the global one takes the small tensor first
    assert masks[0].tolist() == [False] * 4 and bool(masks[1].all())
    assert threshold == pytest.approx(0.4)
    masks, _ = global_magnitude_masks([small, large], 0.75)
    assert masks[1].tolist() == [[False, False], [True, True]]


def test_masks_prune_exactly_k_even_with_ties():
    masks, threshold = global_magnitude_masks([torch.zeros(10), torch.ones(3)], 0.3)
    assert int((~masks[0]).sum()) == 4 and bool(masks[1].all())  # round(0.3 * 13) = 4
    assert threshold == 0.0
    masks, _ = global_magnitude_masks([torch.ones(7)], 0.0)
    assert bool(masks[0].all())


def test_weights_only_by_default():
    model = build_model("transformer", n_layer=1)
    names = [n for n, _ in prunable_parameters(model)]
    assert "tok_emb.weight" in names and "head.weight" in names
    assert not any(n.endswith("bias") or ".ln" in n or n.startswith("ln_f") for n in names)
    assert len(prunable_parameters(model, include_all=True)) == len(list(model.parameters()))


def test_prune_eval_degrades_and_restores_the_model(trained_run):
    torch.manual_seed(0)
    model = build_model("mlp")
    model.load_state_dict(torch.load(trained_run / "final.pt", weights_only=True)["model"])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data = load_data("digits")
    results = prune_eval(model, data, "cross_entropy", [0.0, 0.5, 0.95])
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert results[0].num_pruned == 0 and results[0].eval_loss == pytest.approx(
        evaluate(model, data, "cross_entropy").loss
    )
    prunable = sum(p.numel() for _, p in prunable_parameters(model))
    assert results[1].num_prunable == prunable == 64 * 64 + 64 * 64 + 64 * 10
    assert results[1].num_pruned == round(0.5 * prunable)
    assert results[2].eval_loss > results[1].eval_loss > results[0].eval_loss - 1e-3
    assert results[2].eval_accuracy < results[0].eval_accuracy


def test_parse_sparsities():
    assert parse_sparsities("0.5, 0.1,0.5") == [0.0, 0.1, 0.5]
    for bad, message in (
        ("1.0", r"in \[0, 1\)"),
        ("-0.1", r"in \[0, 1\)"),
        ("x", "not a number"),
        (",", "empty"),
    ):
        with pytest.raises(UserError, match=message):
            parse_sparsities(bad)


def test_prune_eval_cli_uses_the_runs_held_out_data(trained_run, tmp_path, capsys):
    code = main(["prune-eval", str(trained_run / "final.pt"), "--sparsity", "0.2,0.6", "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    payload = json.loads(captured.out)
    assert payload["num_items"] == 180  # the 10% of 1797 digits held out by the run
    assert "held-out" in payload["data"]
    assert [r["sparsity"] for r in payload["results"]] == [0.0, 0.2, 0.6]
    assert json.loads((trained_run / "prune-final.json").read_text()) == payload
    csv = (trained_run / "prune-final.csv").read_text().splitlines()
    assert csv[0].startswith("sparsity,num_pruned") and len(csv) == 4
    summary = json.loads((trained_run / "summary.json").read_text())
    assert payload["results"][0]["eval_loss"] == pytest.approx(summary["eval_loss"], rel=1e-9)

    # a plain state dict: the model must be named, the data is all of it (with a note)
    sd = torch.load(trained_run / "final.pt", weights_only=True)["model"]
    plain = tmp_path / "plain.pt"
    torch.save(sd, plain)
    out = tmp_path / "out"
    code = main(
        [
            "prune-eval",
            str(plain),
            "--model",
            "mlp",
            "--samples",
            "100",
            "--sparsity",
            "0.5",
            "--out",
            str(out),
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    result = json.loads((out / "prune-plain.json").read_text())
    assert result["num_items"] == 100 and "no held-out" in result["data"]
    assert "one-shot global magnitude pruning" in captured.out


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["prune-eval", "missing.pt"], "checkpoint not found"),
        (["prune-eval", "RUN", "--sparsity", "1.5"], "sparsity must be in [0, 1)"),
        (["prune-eval", "RUN", "--samples", "0"], "'--samples': must be an integer in [1, 2**63-1]"),
    ],
)
def test_prune_eval_errors_are_one_line(args, fragment, trained_run, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = [str(trained_run / "final.pt") if a == "RUN" else a for a in args]
    code = main(args)
    err = capsys.readouterr().err
    assert code == (1 if "missing.pt" in args else 2)  # a value out of range is a usage error
    assert err.count("\n") == 1 and err.startswith("error: ") and fragment in err, err
