"""Turn command-line style specs (model, data, checkpoint) into a model and a data set.

Precedence for each of model, data and loss: the explicit option, then the ``config`` stored in
the checkpoint (run checkpoints of ``landscape train``), then the built-in model's defaults
(``mlp``/``cnn`` -> ``digits``, ``transformer`` -> ``text``; cross-entropy).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from landscape.adapters import add_run_adapters
from landscape.checkpoints import load_checkpoint, load_into_model
from landscape.data import load_data, train_eval_split
from landscape.data.loaders import Dataset
from landscape.errors import UserError
from landscape.models import build_model, list_models, model_info
from landscape.provenance import provenance
from landscape.trust import check_stored_specs

__all__ = ["DEFAULT_MAX_TARGETS", "Inputs", "eval_split_from_config", "resolve_inputs"]

# Without --samples, analysis uses at most this many targets (tokens for a language model): all 1797
# digits, 64 sequences of 64 bytes of the text corpus. Curvature estimates on more data cost
# proportionally more; ask for them explicitly.
DEFAULT_MAX_TARGETS = 4096


@dataclass
class Inputs:
    """A ready model (weights loaded, in ``dtype``) and data set, plus where they came from."""

    model: nn.Module
    data: Dataset
    loss: str
    model_spec: str
    data_spec: str
    checkpoint: str | None
    config: dict[str, Any] = field(default_factory=dict)
    note: str | None = None

    def context(self) -> dict[str, Any]:
        """Provenance for output files: the inputs, and the versions and command line that made
        them (:func:`landscape.provenance.provenance`)."""
        return {
            "model": self.model_spec,
            "data": self.data_spec,
            "checkpoint": self.checkpoint,
            "loss": self.loss,
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "note": self.note,
        } | provenance()


def resolve_inputs(
    checkpoint: str | Path | None = None,
    model: str | None = None,
    data: str | None = None,
    loss: str | None = None,
    *,
    samples: int | None = None,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    trust_checkpoint: bool = False,
    seq_len: int | None = None,
    max_targets: int | None = DEFAULT_MAX_TARGETS,
    use_eval_data: bool = False,
    allowed_code: Collection[str | None] = (),
) -> Inputs:
    """Build the model (``torch.manual_seed(seed)`` first, so built-in initialisations repeat) and
    cast it to ``dtype``, load the checkpoint's weights into it (a checkpoint in ``dtype`` comes
    back bit for bit) and load the data set.

    The checkpoint's stored config never chooses code to run (:mod:`landscape.trust`): an import
    path it stores for the model, the data or the loss (and the held-out data, with
    ``use_eval_data``, for callers that evaluate on it) is used only when the same spec is given
    here (``model``/``data``/``loss``), listed in ``allowed_code``, or ``trust_checkpoint`` is set.
    """
    config: dict[str, Any] = {}
    state = None
    if checkpoint is not None:
        state, stored = load_checkpoint(checkpoint, trust_checkpoint=trust_checkpoint)
        config = dict(stored or {})
        used = [key for key, named in (("model", model), ("data", data), ("loss", loss)) if not named]
        check_stored_specs(
            config,
            f"checkpoint {checkpoint}",
            keys=used + (["eval_data"] if use_eval_data else []),
            allowed=[model, data, loss, *allowed_code],
            trust=trust_checkpoint,
        )
    model_spec = model or config.get("model")
    if not model_spec:
        names = ", ".join(list_models())
        raise UserError(f"--model is required: a built-in ({names}) or an import path package.module:factory")
    builtin = model_spec in list_models()
    info = model_info(model_spec) if builtin else None
    kwargs = dict(config.get("model_kwargs") or {}) if model_spec == config.get("model") else {}
    torch.manual_seed(seed)
    net = build_model(model_spec, **kwargs)  # first, so an unknown model name is what gets reported
    # in the analysis dtype before any weight is loaded: a float64 checkpoint loaded into float32
    # parameters would lose its last 29 bits, which no later cast brings back
    net = net.to(dtype)
    if config and model_spec == config.get("model"):
        # a LoRA run's checkpoint holds adapter weights: give the rebuilt model its adapters first
        add_run_adapters(net, config)
    data_spec = data or config.get("data") or (info.default_data if info else None)
    if not data_spec:
        raise UserError(
            "--data is required for a model given by import path "
            "(a built-in, a .pt/.npz file or module:function)"
        )
    loss_name = loss or config.get("loss") or (info.loss if info else "cross_entropy")
    if state is not None:
        load_into_model(net, state)
    length = seq_len or int(config.get("seq_len", 64))
    # A training run's checkpoint whose data was split into train and eval parts: analyse the
    # training part (the loss that was minimised), unless other data was asked for.
    split = config.get("train_split") if not data and data_spec == config.get("data") else None
    dataset = load_data(data_spec, samples=None if split else samples, seed=seed, seq_len=length, dtype=dtype)
    note = None
    if split:
        dataset = train_eval_split(dataset, float(split["eval_fraction"]), int(split["seed"]))[0]
        dataset = dataset.subset(slice(0, samples)) if samples else dataset
        note = f"data: the run's training split of {data_spec} ({len(dataset)} items)"
    if samples is None and max_targets is not None:
        per_sample = max(1, dataset.y[:1].numel())
        keep = max(1, max_targets // per_sample)
        if keep < len(dataset):
            cap = f"using the first {keep} of {len(dataset)} items ({keep * per_sample} targets); --samples N changes it"
            note = f"{note}; {cap}" if note else cap
            dataset = dataset.subset(slice(0, keep))
    return Inputs(
        net, dataset, loss_name, model_spec, data_spec, str(checkpoint) if checkpoint else None, config, note
    )


def eval_split_from_config(stored: dict[str, Any], dtype: torch.dtype) -> Dataset | None:
    """The evaluation data of a run, from the ``config`` stored in one of its checkpoints.

    ``None`` when the checkpoint holds no run configuration (a plain state dict).
    """
    if not stored or not stored.get("data"):
        return None
    seq_len = int(stored.get("seq_len") or 64)
    if stored.get("eval_data"):
        return load_data(stored["eval_data"], seq_len=seq_len, dtype=dtype)
    split = stored.get("train_split")
    if not split:
        return None
    data = load_data(stored["data"], seq_len=seq_len, dtype=dtype)
    return train_eval_split(data, float(split["eval_fraction"]), int(split["seed"]))[1]
