"""Building a run from its resolved configuration: data, model, rule, optimizer, batch order.

The model is built after ``torch.manual_seed(seed)`` in the run's dtype, ``init``'s weights are
loaded into it, and then the adapters of a LoRA method are added
(:func:`landscape.adapters.add_run_adapters`); only they train. A resumed run rebuilds the same objects and loads its checkpoint's state into them
(:func:`restore`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from landscape.adapters import add_run_adapters
from landscape.checkpoints import load_into_model
from landscape.data import Dataset
from landscape.errors import UserError, one_line
from landscape.evaluation import fixed_subset
from landscape.losses import LossLike
from landscape.models import build_model, unwrap_output
from landscape.optim import GradientRule, make_base_optimizer, make_rule
from landscape.problem import named_loss
from landscape.runs import set_rng_state
from landscape.train.batches import BatchOrder
from landscape.train.config import (
    DEFAULT_BATCH_SIZE,
    DIAGNOSE_TARGETS,
    FINAL_ANALYSIS_TARGETS,
    RunConfig,
    load_splits,
)
from landscape.train.diagnostics import unigram_baseline

__all__ = ["PreparedRun", "prepare", "restore"]


@dataclass
class PreparedRun:
    """Everything a run trains with, built from its configuration (see :func:`prepare`)."""

    config: RunConfig
    model: nn.Module
    train: Dataset
    eval: Dataset
    subset: Dataset | None
    rule: GradientRule
    optimizer: torch.optim.Optimizer
    order: BatchOrder
    baseline: dict[str, float] | None


def _targets_per_item(data: Dataset) -> int:
    return max(1, int(data.y[:1].numel()))


def _build_model(config: RunConfig) -> nn.Module:
    """The run's model: built after ``torch.manual_seed(seed)`` and cast to the run's dtype, then
    ``init``'s weights loaded (in that dtype: a float64 checkpoint comes back bit for bit; a
    LoRA ``init`` is merged in it), then the adapters of a LoRA method added (on the loaded
    weights, which they leave unchanged at the start since B = 0; A is drawn in the run's dtype).
    A resumed run rebuilds the same model before its checkpoint's state (adapters included) is
    loaded into it."""
    assert config.model is not None, "resolve the config first"
    from landscape.distributed import resolve_device

    torch.manual_seed(config.seed)
    model = build_model(config.model, **config.model_kwargs).to(config.torch_dtype())
    if config.init is not None:
        _load_init(model, config.init)
    if config.uses_lora:
        add_run_adapters(model, config)
    return model.to(resolve_device(config.device))  # the data stays on the host: batches move


def _load_init(model: nn.Module, path: str) -> None:
    """Load ``--init`` weights; those of a LoRA run (``final.pt`` with adapters) are first merged
    into the base weights, ``W0 + s B A``, so any method can go on from a fine-tuned model."""
    from landscape.checkpoints import load_checkpoint
    from landscape.optim import lora_layers, merge_lora

    state, stored = load_checkpoint(path)
    if lora_layers(model) or not any(".lora_A" in key for key in state):
        load_into_model(model, state)
        return
    trainable = {name: p.requires_grad for name, p in model.named_parameters()}
    if not stored or not add_run_adapters(model, stored):
        raise UserError(
            f"--init {path} holds LoRA adapters, but no run configuration that says how to rebuild them"
        )
    load_into_model(model, state)
    merge_lora(model)
    # add_run_adapters froze the base weights for the old run; the parameters keep their names
    # through wrapping and merging, so the model's own flags come back by name
    for name, p in model.named_parameters():
        p.requires_grad_(trainable.get(name, True))


def prepare(config: RunConfig) -> PreparedRun:
    """Load data, fill the data-dependent defaults, build model, rule, optimizer and batch order."""
    train, eval_data = load_splits(config)
    per_item = _targets_per_item(train)
    batch_size = config.batch_size or DEFAULT_BATCH_SIZE.get(train.task, 64)
    if batch_size > len(train):
        raise UserError(f"--batch-size {batch_size} exceeds the {len(train)} training items")
    config = dataclasses.replace(
        config,
        batch_size=batch_size,
        diagnose_samples=config.diagnose_samples or max(1, DIAGNOSE_TARGETS // per_item),
        final_samples=config.final_samples or max(1, FINAL_ANALYSIS_TARGETS // per_item),
        final_analysis=config.diagnose_every > 0 if config.final_analysis is None else config.final_analysis,
    )
    model = _build_model(config)
    _check_model_fits_data(model, train, eval_data, config.loss or "cross_entropy")
    try:
        rule = make_rule(config.method, **config.rule_options())
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = make_base_optimizer(config.base_optimizer, params, **config.optimizer_options())
    except (TypeError, ValueError) as exc:
        raise UserError(f"cannot build method {config.method}: {exc}") from None
    subset = (
        fixed_subset(train, config.diagnose_samples or 1, config.split_seed)
        if config.diagnose_every
        else None
    )
    order = BatchOrder(len(train), batch_size, config.seed, config.shuffle)
    return PreparedRun(
        config, model, train, eval_data, subset, rule, optimizer, order, unigram_baseline(train, eval_data)
    )


def _check_model_fits_data(model: nn.Module, train: Dataset, eval_data: Dataset, loss: LossLike) -> None:
    """Run the model on two training items so that a mismatch fails now with a ``UserError``
    rather than after the first step; check every label against the number of outputs.

    In eval mode and on a forked RNG: no BatchNorm statistics move and no random draw is used up.
    """
    was_training = model.training
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            model.eval()
            device = next((p.device for p in model.parameters()), torch.device("cpu"))
            out = unwrap_output(model(train.x[:2].to(device))).cpu()  # the labels stay on the host
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"the model cannot run on data '{train.name}': {one_line(exc, 200)}") from None
    finally:
        model.train(was_training)
    # the loss's own checks: shapes, and every label of both data sets against the outputs
    named_loss(loss, model).check_outputs(out, [train.y[:2], train.y, eval_data.y])


def restore(run: PreparedRun, state: dict[str, Any]) -> tuple[list[float], float]:
    """Load a step checkpoint's state into ``run``; returns the pending batch losses and the
    training seconds so far."""
    load_into_model(run.model, state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.rule.load_state_dict(state["rule"])
    run.order.load_state_dict(state["data_order"])
    set_rng_state(state["rng"])
    return [float(x) for x in state.get("pending_losses", [])], float(state.get("elapsed_s", 0.0))
