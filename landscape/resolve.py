"""Turn command-line style specs (model, data, checkpoint) into a model and a data set.

Precedence for each of model, data and loss: the explicit option, then the ``config`` stored in
the checkpoint (run checkpoints of ``landscape train``), then the built-in model's defaults
(``mlp``/``cnn`` -> ``digits``, ``transformer`` -> ``text``; cross-entropy).

The checkpoint may also be a folder:

* a run folder of ``landscape train`` (``config.json`` and ``final.pt``) stands for its ``final.pt``;
* a Hugging Face ``save_pretrained`` folder or a peft adapter folder over a local base
  (:mod:`landscape.models.hf`) builds its own model from its ``config.json``, with no download
  and no code of the folder's own unless trusted (``auto_map``); the data must be named. The
  default loss of such a model is its own (``"model"``, :class:`landscape.losses.ModelLoss`),
  except for a causal language model, whose default is cross-entropy on the targets as given
  (position t predicts target t, as the built-in ``text`` data lays them out); when the targets
  *are* the input ids (Hugging Face's ``labels=input_ids`` convention) they are shifted left by
  one first (position t predicts token t + 1, the last position nothing), which is the loss the
  model computes from ``labels=`` (Radford et al. 2019, "Language Models are Unsupervised
  Multitask Learners", Sec. 2: the next-token log-likelihood).
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
from landscape.data import IGNORE_INDEX, load_data, primary_inputs, train_eval_split
from landscape.data.loaders import Dataset
from landscape.errors import UserError
from landscape.losses import ModelLoss
from landscape.models import build_model, list_models, model_info
from landscape.models.hf import is_pretrained_folder, load_pretrained_folder
from landscape.provenance import provenance
from landscape.runs import CONFIG_FILE, FINAL_FILE, METRICS_FILE
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
    if checkpoint is not None and Path(checkpoint).expanduser().is_dir():
        folder = Path(checkpoint).expanduser()
        inner = _checkpoint_in_folder(folder)
        if inner is None:
            return _resolve_pretrained(
                folder,
                model,
                data,
                loss,
                samples=samples,
                seed=seed,
                dtype=dtype,
                trust_checkpoint=trust_checkpoint,
                seq_len=seq_len,
                max_targets=max_targets,
            )
        checkpoint = inner
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
        dataset, cap = _capped(dataset, max_targets)
        note = _joined(note, cap)
    return Inputs(
        net, dataset, loss_name, model_spec, data_spec, str(checkpoint) if checkpoint else None, config, note
    )


def _joined(*notes: str | None) -> str | None:
    kept = [n for n in notes if n]
    return "; ".join(kept) if kept else None


def _capped(dataset: Dataset, max_targets: int) -> tuple[Dataset, str | None]:
    """The first items of ``dataset`` that hold at most ``max_targets`` targets, and a note when cut."""
    per_sample = max(1, dataset.y[:1].numel())
    keep = max(1, max_targets // per_sample)
    if keep >= len(dataset):
        return dataset, None
    cap = f"using the first {keep} of {len(dataset)} items ({keep * per_sample} targets); --samples N changes it"
    return dataset.subset(slice(0, keep)), cap


def _checkpoint_in_folder(folder: Path) -> Path | None:
    """The checkpoint a folder stands for: a run folder's ``final.pt``, or ``None`` for a Hugging
    Face (or peft adapter) folder, which :func:`_resolve_pretrained` reads. Anything else is a
    one-line ``UserError`` naming what was expected."""
    if is_pretrained_folder(folder):
        return None
    if (folder / FINAL_FILE).is_file():
        return folder / FINAL_FILE
    if (folder / CONFIG_FILE).is_file() and (folder / METRICS_FILE).is_file():
        raise UserError(
            f"run {folder} has not finished (no {FINAL_FILE}): give one of its checkpoints/step-N.pt"
        )
    raise UserError(
        f"checkpoint path is not a file: {folder}, and the folder is neither a landscape run folder "
        f"({CONFIG_FILE} and {FINAL_FILE}) nor a Hugging Face save_pretrained folder (config.json with model.safetensors, model.safetensors.index.json or "
        "pytorch_model.bin; or a peft adapter_config.json with its adapter weights)"
    )


def _hf_config(net: nn.Module) -> tuple[Any, nn.Module]:
    """The ``transformers`` config and the model itself (a peft model's base) of a Hugging Face model."""
    base = net.get_base_model() if hasattr(net, "get_base_model") else net
    return getattr(base, "config", None), base


def _check_tokens_fit(net: nn.Module, dataset: Dataset, folder: Path) -> None:
    """Token ids within the vocabulary and sequences within the positions of the model's config:
    otherwise the embedding lookup fails deep inside the model with an index error."""
    config, _ = _hf_config(net)
    ids = primary_inputs(dataset.x)
    if config is None or ids.is_floating_point() or ids.dim() < 2:
        return
    vocab = getattr(config, "vocab_size", None)
    if isinstance(vocab, int) and ids.numel() and int(ids.max()) >= vocab:
        raise UserError(
            f"the data {dataset.name} has token id {int(ids.max())}, but the model of {folder} has a "
            f"vocabulary of {vocab} (vocab_size in its config.json)"
        )
    positions = getattr(config, "max_position_embeddings", None)
    if isinstance(positions, int) and ids.shape[-1] > positions:
        raise UserError(
            f"the data {dataset.name} has sequences of {ids.shape[-1]} tokens, but the model of {folder} "
            f"takes at most {positions} (max_position_embeddings in its config.json); --seq-len shortens "
            "the built-in text"
        )


def _is_causal_lm(base: nn.Module) -> bool:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    name = type(base).__name__
    return name.endswith("ForCausalLM") or name in set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())


def _labels_are_input_ids(dataset: Dataset) -> bool:
    """Whether the targets are the input ids themselves (``-100`` where not counted): Hugging
    Face's ``labels=input_ids`` convention, in which the causal-LM loss shifts them."""
    ids, y = primary_inputs(dataset.x), dataset.y
    if ids.is_floating_point() or y.is_floating_point() or ids.shape != y.shape:
        return False
    counted = y != IGNORE_INDEX
    return bool(counted.any()) and bool((y[counted] == ids[counted]).all())


def _default_hf_loss(net: nn.Module, dataset: Dataset) -> tuple[str, Dataset, str | None]:
    """The default loss of a Hugging Face model (module docstring), the data it is computed on
    (targets shifted for a causal LM given ``labels=input_ids``) and a note saying what was chosen."""
    _, base = _hf_config(net)
    if _is_causal_lm(base):
        if not _labels_are_input_ids(dataset):
            return "cross_entropy", dataset, None
        shifted = ModelLoss(base).model_targets(dataset.y)  # the shift of the model's own loss
        data = Dataset(
            dataset.x, shifted, name=dataset.name, task=dataset.task, num_classes=dataset.num_classes
        )
        return (
            "cross_entropy",
            data,
            "loss: cross_entropy on the targets shifted left by one (they are the input ids, as "
            "labels= of a causal LM; the last position predicts nothing); --loss changes it",
        )
    try:
        ModelLoss(net)
    except UserError:
        return "cross_entropy", dataset, None
    return "model", dataset, "loss: the model's own (labels=), as Hugging Face computes it; --loss changes it"


def _resolve_pretrained(
    folder: Path,
    model: str | None,
    data: str | None,
    loss: str | None,
    *,
    samples: int | None,
    seed: int,
    dtype: torch.dtype,
    trust_checkpoint: bool,
    seq_len: int | None,
    max_targets: int | None,
) -> Inputs:
    """:func:`resolve_inputs` for a Hugging Face ``save_pretrained`` (or peft adapter) folder."""
    if model:
        raise UserError(f"{folder} builds its model from its config.json: drop --model {model}")
    if not data:
        raise UserError(
            f"--data is required with the Hugging Face folder {folder}: a built-in (text, digits), "
            "a .pt/.npz file with x and y, or module:function returning (inputs, targets)"
        )
    torch.manual_seed(seed)  # initialisations the weights then replace (and any the folder lacks)
    net = load_pretrained_folder(folder, dtype=dtype, trust_checkpoint=trust_checkpoint)
    dataset = load_data(data, samples=samples, seed=seed, seq_len=seq_len or 64, dtype=dtype)
    _check_tokens_fit(net, dataset, folder)
    note = None
    if loss is None:
        loss, dataset, note = _default_hf_loss(net, dataset)
    if samples is None and max_targets is not None:
        dataset, cap = _capped(dataset, max_targets)
        note = _joined(note, cap)
    _, base = _hf_config(net)
    return Inputs(net, dataset, loss, type(base).__name__, data, str(folder), {}, note)


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
