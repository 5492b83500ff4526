"""Data specs, loading, validation, splitting and batching.

A *data spec* is one of

* a built-in name: ``digits``, ``text``, ``text-train``, ``text-eval`` (see ``list_data``);
* a file: ``*.pt`` / ``*.pth`` (a dict with tensors ``x`` and ``y``, read with
  ``torch.load(weights_only=True)``) or ``*.npz`` (arrays ``x`` and ``y``, read with
  ``allow_pickle=False``); either may also hold an integer ``num_classes``;
* an import path ``package.module:function`` naming a zero-argument callable (or an object)
  that gives a ``Dataset`` (indexable, with ``len``, items ``(x, y)``), a ``DataLoader`` of
  ``(x, y)`` batches, an ``(x, y)`` pair or a dict with ``x`` and ``y``; the items are collated
  into two tensors. In a pair, ``x`` may also be a dict of tensors, the model's keyword inputs
  (Hugging Face style ``({"input_ids": ..., "attention_mask": ...}, y)``).

Everything is loaded into memory as one ``Dataset`` holding tensors ``x`` and ``y``. The task
is ``classification`` (long labels ``[N]``), ``language_model`` (long token ids ``x`` and
next-token targets ``y``, both ``[N, T]``) or ``regression`` (float targets). Long labels may
be ``-100`` (the cross-entropy ignore index) and are otherwise ``0 <= y < num_classes``.
"""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.utils.data
from torch import Tensor

from landscape.data.builtin import (
    DIGITS_NUM_CLASSES,
    TEXT_VOCAB_SIZE,
    digits_tensors,
    split_text_corpus,
    text_corpus_bytes,
    text_sequences,
)
from landscape.errors import UserError, one_line
from landscape.losses import IGNORE_INDEX

__all__ = [
    "IGNORE_INDEX",
    "Inputs",
    "data_spec_kind",
    "TASKS",
    "Dataset",
    "iterate_batches",
    "list_data",
    "load_data",
    "primary_inputs",
    "take_inputs",
    "train_eval_split",
    "validate_labels",
]

TASKS = ("classification", "language_model", "regression")
TORCH_SUFFIXES = (".pt", ".pth")
NUMPY_SUFFIXES = (".npz",)


Inputs = Tensor | dict[str, Tensor]
"""A batch of model inputs: one tensor, or a dict of tensors passed as keyword arguments
(Hugging Face style ``{"input_ids": ..., "attention_mask": ...}``), all with the sample dimension first."""


def take_inputs(x: Inputs, index: Any) -> Inputs:
    """Rows ``index`` (an int, slice or index tensor) of a tensor or of every tensor in a dict."""
    if isinstance(x, Mapping):
        return {k: v[index] for k, v in x.items()}
    return x[index]


def primary_inputs(x: Inputs) -> Tensor:
    """The tensor that stands for the inputs: itself, or a dict's ``input_ids`` (else its first entry)."""
    if isinstance(x, Mapping):
        return x["input_ids"] if "input_ids" in x else next(iter(x.values()))
    return x


def _map_inputs(x: Inputs, fn: Callable[[Tensor], Tensor]) -> Inputs:
    return {k: fn(v) for k, v in x.items()} if isinstance(x, Mapping) else fn(x)


class Dataset(torch.utils.data.Dataset):
    """An in-memory data set: inputs ``x`` and targets ``y`` with the same first dimension.

    ``x`` is a tensor or a dict of tensors (keyword inputs of the model, e.g. ``input_ids`` and
    ``attention_mask``). Attributes: ``name`` (the spec it came from), ``task`` (one of ``TASKS``),
    ``num_classes`` (number of classes / vocabulary size, or ``None`` when unknown or for
    regression). Items are ``(x[i], y[i])``, so it also works with a ``torch.utils.data.DataLoader``.
    """

    def __init__(self, x: Inputs, y: Tensor, *, name: str, task: str, num_classes: int | None = None) -> None:
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        sizes = {len(v) for v in x.values()} if isinstance(x, Mapping) else {len(x)}
        if sizes != {len(y)}:
            raise ValueError(f"x has {sorted(sizes)} samples but y has {len(y)}")
        self.x = x
        self.y = y
        self.name = name
        self.task = task
        self.num_classes = num_classes

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, index: int) -> tuple[Inputs, Tensor]:
        return take_inputs(self.x, index), self.y[index]

    def __repr__(self) -> str:
        if isinstance(self.x, Mapping):
            inputs = "{" + ", ".join(f"{k}: {list(v.shape)} {v.dtype}" for k, v in self.x.items()) + "}"
        else:
            inputs = f"{list(self.x.shape)} {self.x.dtype}"
        return (
            f"Dataset(name={self.name!r}, task={self.task!r}, n={len(self)}, x={inputs}, "
            f"y={list(self.y.shape)} {self.y.dtype}, num_classes={self.num_classes})"
        )

    def subset(self, index: Tensor | slice | Sequence[int]) -> Dataset:
        """A new ``Dataset`` with the rows ``index`` (a slice, index tensor or list) and the same metadata."""
        if not isinstance(index, slice):
            index = torch.as_tensor(index, dtype=torch.long)
        return Dataset(
            take_inputs(self.x, index),
            self.y[index],
            name=self.name,
            task=self.task,
            num_classes=self.num_classes,
        )

    def to(self, device: torch.device | str) -> Dataset:
        """A copy with ``x`` and ``y`` moved to ``device``."""
        return Dataset(
            _map_inputs(self.x, lambda t: t.to(device)),
            self.y.to(device),
            name=self.name,
            task=self.task,
            num_classes=self.num_classes,
        )


# ----------------------------------------------------------------------------------------------
# Built-ins


def _digits(seq_len: int, dtype: torch.dtype) -> tuple[Tensor, Tensor, str, int]:
    x, y = digits_tensors(dtype)
    return x, y, "classification", DIGITS_NUM_CLASSES


def _text_part(part: int | None) -> Callable[[int, torch.dtype], tuple[Tensor, Tensor, str, int]]:
    def load(seq_len: int, dtype: torch.dtype) -> tuple[Tensor, Tensor, str, int]:
        data = text_corpus_bytes() if part is None else split_text_corpus()[part]
        x, y = text_sequences(data, seq_len)
        return x, y, "language_model", TEXT_VOCAB_SIZE

    return load


_BUILTIN_DATA: dict[str, tuple[Callable[[int, torch.dtype], tuple[Tensor, Tensor, str, int]], str]] = {
    "digits": (_digits, "scikit-learn 8x8 handwritten digits: 1797 x 64 pixels in [0, 1], 10 classes"),
    "text": (_text_part(None), "byte-level LM corpus from Python's pydoc topics (~466k bytes, vocab 256)"),
    "text-train": (_text_part(0), "first 90% of the bytes of the text corpus"),
    "text-eval": (_text_part(1), "last 10% of the bytes of the text corpus (disjoint from text-train)"),
}


def list_data() -> dict[str, str]:
    """Built-in data set names mapped to a one-line description each."""
    return {name: description for name, (_, description) in _BUILTIN_DATA.items()}


# ----------------------------------------------------------------------------------------------
# Loading


def data_spec_kind(spec: str) -> str:
    """What ``load_data`` does with ``spec``: ``"builtin"``, ``"file"`` (read as data, never run),
    ``"import"`` (imports Python code and calls it) or ``"unknown"`` (an error)."""
    spec = spec.strip()
    if spec in _BUILTIN_DATA:
        return "builtin"
    path = Path(spec).expanduser()
    if path.suffix.lower() in TORCH_SUFFIXES + NUMPY_SUFFIXES or path.is_file():
        return "file"
    if ":" in spec or "." in spec:
        return "import"
    return "unknown"


def load_data(
    spec: str,
    *,
    samples: int | None = None,
    seed: int = 0,
    seq_len: int = 64,
    dtype: torch.dtype = torch.float32,
) -> Dataset:
    """Load the data named by ``spec`` (built-in name, ``.pt``/``.npz`` file or import path).

    ``samples`` keeps the first ``samples`` items (all when ``None`` or larger than the data);
    the order is the source's own (digits: scikit-learn's order, text: corpus order), so the
    result is deterministic. ``seed`` is accepted for a stable call signature and recorded
    nowhere: no source here is shuffled (use ``train_eval_split(ds, fraction, seed)`` for a
    random split). ``seq_len`` is the sequence length of the text built-ins. Float inputs and
    float targets are cast to ``dtype``; integer inputs (token ids) and class labels become
    ``torch.long`` (integer pixel data must be converted to float by the user).

    Raises ``UserError`` for an unknown name, a missing/unreadable/corrupt file, missing ``x``
    or ``y``, ``len(x) != len(y)``, empty data, NaN/inf values or labels out of range.
    """
    del seed  # documented above: nothing here is shuffled
    if samples is not None and (isinstance(samples, bool) or not isinstance(samples, int) or samples < 1):
        raise UserError(f"samples must be a positive integer, got {samples!r}")
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
        raise UserError(f"seq_len must be a positive integer, got {seq_len!r}")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise UserError(f"data dtype must be a floating-point torch dtype, got {dtype!r}")
    if not isinstance(spec, str) or not spec.strip():
        raise UserError(f"data spec must be a non-empty string, got {spec!r}")
    spec = spec.strip()

    num_classes: int | None
    if spec in _BUILTIN_DATA:
        x, y, task, num_classes = _BUILTIN_DATA[spec][0](seq_len, dtype)
        return _finish(x, y, spec, samples, dtype, task=task, num_classes=num_classes)

    kind = data_spec_kind(spec)
    path = Path(spec).expanduser()
    suffix = path.suffix.lower()
    if kind == "file":
        if not path.exists():
            raise UserError(f"data file not found: {spec}")
        if not path.is_file():
            raise UserError(f"data path is not a file: {spec}")
        if suffix in TORCH_SUFFIXES:
            x, y, num_classes = _read_torch_file(path)
        elif suffix in NUMPY_SUFFIXES:
            x, y, num_classes = _read_npz_file(path)
        else:
            raise UserError(
                f"unsupported data file type '{suffix or path.name}' for {spec} (expected .pt, .pth or .npz)"
            )
        return _finish(x, y, spec, samples, dtype, num_classes=num_classes)

    if kind == "import":
        from landscape.models.zoo import resolve_import_path

        obj = resolve_import_path(spec, "data function")
        return _from_python_object(obj, spec, samples, dtype)

    raise UserError(
        f"unknown data set '{spec}' (built-ins: {', '.join(_BUILTIN_DATA)}; "
        "or a .pt/.npz file, or an import path package.module:function)"
    )


def _num_classes_entry(value: Any, where: str) -> int | None:
    if value is None:
        return None
    try:
        n = int(value.item() if hasattr(value, "item") else value)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise UserError(f"num_classes in {where} is not an integer: {value!r}") from exc
    if n < 1 or float(value.item() if hasattr(value, "item") else value) != n:
        raise UserError(f"num_classes in {where} must be a positive integer, got {value!r}")
    return n


def _read_torch_file(path: Path) -> tuple[Any, Any, int | None]:
    try:
        obj = torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as exc:
        from landscape.checkpoints import unsafe_globals

        bad = unsafe_globals(path)
        if not bad:
            raise UserError(f"cannot read data file {path}: the file is corrupt or truncated") from exc
        raise UserError(
            f"data file {path} holds Python objects that safe (weights-only) loading refuses "
            f"({', '.join(bad[:3])}); save a plain dict of tensors {{'x': ..., 'y': ...}} instead"
        ) from exc
    except Exception as exc:
        raise UserError(
            f"cannot read data file {path}: corrupt or not a torch.save file ({type(exc).__name__}: {exc})"
        ) from exc
    if not isinstance(obj, Mapping):
        raise UserError(
            f"data file {path} holds a {type(obj).__name__}; expected a dict with keys 'x' and 'y'"
        )
    missing = [k for k in ("x", "y") if k not in obj]
    if missing:
        raise UserError(
            f"data file {path} lacks key(s) {', '.join(repr(k) for k in missing)} "
            f"(found: {', '.join(repr(str(k)) for k in list(obj)[:8]) or 'nothing'})"
        )
    return obj["x"], obj["y"], _num_classes_entry(obj.get("num_classes"), str(path))


def _read_npz_file(path: Path) -> tuple[Any, Any, int | None]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            if not isinstance(npz, np.lib.npyio.NpzFile):
                raise UserError(
                    f"data file {path} is a single .npy array, not an .npz archive with 'x' and 'y'"
                )
            keys = list(npz.files)
            missing = [k for k in ("x", "y") if k not in keys]
            if missing:
                raise UserError(
                    f"data file {path} lacks array(s) {', '.join(repr(k) for k in missing)} "
                    f"(found: {', '.join(repr(k) for k in keys[:8]) or 'nothing'})"
                )
            x, y = npz["x"], npz["y"]
            num_classes = npz["num_classes"] if "num_classes" in keys else None
    except UserError:
        raise
    except ValueError as exc:
        if "Object arrays" in str(exc):
            raise UserError(
                f"data file {path} holds object arrays (pickled Python objects); save numeric arrays"
            ) from exc
        raise UserError(f"cannot read data file {path}: corrupt or not an .npz archive ({exc})") from exc
    except (OSError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise UserError(
            f"cannot read data file {path}: corrupt or not an .npz archive ({type(exc).__name__}: {exc})"
        ) from exc
    return x, y, _num_classes_entry(num_classes, str(path))


def _is_tensor_like(v: Any) -> bool:
    return isinstance(v, (Tensor, np.ndarray))


def _is_inputs_like(v: Any) -> bool:
    """A tensor/array, or a non-empty dict of them with string keys (keyword inputs)."""
    if isinstance(v, Mapping):
        return bool(v) and all(isinstance(k, str) and _is_tensor_like(t) for k, t in v.items())
    return _is_tensor_like(v)


def _collate_items(items: Iterable[Any], spec: str, samples: int | None) -> tuple[Tensor, Tensor]:
    xs: list[Any] = []
    ys: list[Any] = []
    for item in items:
        if isinstance(item, Mapping) and "x" in item and "y" in item:
            item = (item["x"], item["y"])
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise UserError(
                f"data '{spec}' yields items of type {type(item).__name__}; expected (x, y) pairs"
            )
        xs.append(item[0])
        ys.append(item[1])
        if samples is not None and len(xs) >= samples:
            break
    if not xs:
        raise UserError(f"data '{spec}' is empty")
    try:
        return torch.stack([_item_tensor(v) for v in xs]), torch.stack([_item_tensor(v) for v in ys])
    except Exception as exc:
        raise UserError(
            f"cannot stack the items of data '{spec}' into tensors: {one_line(exc, 200)}"
        ) from exc


def _item_tensor(v: Any) -> Tensor:
    return v.detach().cpu() if isinstance(v, Tensor) else torch.as_tensor(np.asarray(v))


def _collate_batches(loader: Iterable[Any], spec: str, samples: int | None) -> tuple[Tensor, Tensor]:
    xs: list[Tensor] = []
    ys: list[Tensor] = []
    count = 0
    for batch in loader:
        if isinstance(batch, Mapping) and "x" in batch and "y" in batch:
            batch = (batch["x"], batch["y"])
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            raise UserError(
                f"data loader '{spec}' yields {type(batch).__name__} batches; expected (x, y) pairs"
            )
        bx, by = torch.as_tensor(batch[0]), torch.as_tensor(batch[1])
        xs.append(bx)
        ys.append(by)
        count += len(bx)
        if samples is not None and count >= samples:
            break
    if not xs:
        raise UserError(f"data loader '{spec}' yields no batches")
    try:
        return torch.cat(xs), torch.cat(ys)
    except Exception as exc:
        raise UserError(f"cannot concatenate the batches of data loader '{spec}': {exc}") from exc


def _is_dataset_like(obj: Any) -> bool:
    return (
        hasattr(obj, "__len__") and hasattr(obj, "__getitem__") and not isinstance(obj, (str, bytes, Mapping))
    )


def _from_python_object(obj: Any, spec: str, samples: int | None, dtype: torch.dtype) -> Dataset:
    if callable(obj) and not isinstance(obj, (torch.utils.data.Dataset, torch.utils.data.DataLoader)):
        try:
            obj = obj()
        except UserError:
            raise
        except Exception as exc:
            raise UserError(f"data function '{spec}' failed: {type(exc).__name__}: {exc}") from exc
    if isinstance(obj, Dataset):
        return _finish(obj.x, obj.y, spec, samples, dtype, task=obj.task, num_classes=obj.num_classes)
    num_classes = None
    if isinstance(obj, torch.utils.data.DataLoader):
        x, y = _collate_batches(obj, spec, samples)
    elif isinstance(obj, Mapping):
        if "x" not in obj or "y" not in obj:
            raise UserError(f"data '{spec}' returned a dict without keys 'x' and 'y'")
        x, y = obj["x"], obj["y"]
        num_classes = _num_classes_entry(obj.get("num_classes"), f"data '{spec}'")
    elif (
        isinstance(obj, (tuple, list))
        and len(obj) == 2
        and _is_inputs_like(obj[0])
        and _is_tensor_like(obj[1])
    ):
        x, y = obj
    elif _is_dataset_like(obj):
        x, y = _collate_items((obj[i] for i in range(len(obj))), spec, samples)
    elif isinstance(obj, Iterable) and not isinstance(obj, (str, bytes)):
        x, y = _collate_batches(obj, spec, samples)
    else:
        raise UserError(
            f"data '{spec}' gave a {type(obj).__name__}; expected a Dataset, a DataLoader or an (x, y) pair"
        )
    return _finish(x, y, spec, samples, dtype, num_classes=num_classes)


# ----------------------------------------------------------------------------------------------
# Validation


def _as_tensor(v: Any, what: str, name: str) -> Tensor:
    if isinstance(v, Tensor):
        return v.detach().cpu()
    try:
        return torch.as_tensor(np.asarray(v))
    except Exception as exc:
        raise UserError(f"{what} of data '{name}' is not numeric ({type(v).__name__}): {exc}") from exc


def _infer_task(x: Tensor, y: Tensor) -> str:
    if y.is_floating_point():
        return "regression"
    if y.is_complex() or x.is_complex():
        raise UserError("complex-valued data is not supported")
    if not x.is_floating_point() and x.dim() == 2 and y.shape == x.shape:
        return "language_model"
    return "classification"


def _finish(
    x: Any,
    y: Any,
    name: str,
    samples: int | None,
    dtype: torch.dtype,
    *,
    task: str | None = None,
    num_classes: int | None = None,
) -> Dataset:
    if isinstance(x, Mapping):
        if not x:
            raise UserError(f"data '{name}': the dict of inputs is empty")
        x = {str(k): _as_tensor(v, f"input '{k}'", name) for k, v in x.items()}
    else:
        x = _as_tensor(x, "x", name)
    y = _as_tensor(y, "y", name)
    for key, t in x.items() if isinstance(x, dict) else (("x", x),):
        if t.dim() == 0 or y.dim() == 0:
            raise UserError(
                f"data '{name}': {key} and y need a sample dimension, got shapes {list(t.shape)} and {list(y.shape)}"
            )
        if len(t) != len(y):
            raise UserError(f"data '{name}': {key} has {len(t)} samples but y has {len(y)}")
    if len(y) == 0:
        raise UserError(f"data '{name}' is empty (0 samples)")
    if samples is not None and samples < len(y):
        x, y = take_inputs(x, slice(0, samples)), y[:samples]
    if y.dtype == torch.bool:
        y = y.long()
    x = _map_inputs(x, lambda t: t.to(dtype) if t.dtype == torch.bool else t)
    lead = primary_inputs(x)
    if task is None:
        task = _infer_task(lead, y)
    if task == "language_model" and lead.is_floating_point():
        raise UserError(f"data '{name}': language-model inputs must be integer token ids, got {lead.dtype}")
    # Integer inputs are token ids or masks (LMs, sequence classifiers): kept as long, never cast to float.
    x = _map_inputs(x, lambda t: t.to(dtype) if t.is_floating_point() else t.long())
    if task == "regression":
        y = y.to(dtype)
        num_classes = None
    else:
        if y.is_floating_point():
            raise UserError(f"data '{name}': {task} targets must be integer class ids, got {y.dtype}")
        y = y.long()
    named = [(f"inputs {k}", t) for k, t in x.items()] if isinstance(x, dict) else [("inputs x", x)]
    for what, t in [*named, ("targets y", y)]:
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise UserError(f"data '{name}': {what} contain {bad} NaN or infinite value(s)")
    if task != "regression":
        _check_labels(y, num_classes, f"data '{name}'", "labels")
        if task == "language_model":
            _check_labels(primary_inputs(x), num_classes, f"data '{name}'", "token ids", allow_ignore=False)
    x = _map_inputs(x, lambda t: t.contiguous())
    return Dataset(x, y.contiguous(), name=name, task=task, num_classes=num_classes)


def _check_labels(
    y: Tensor, num_outputs: int | None, where: str, what: str, allow_ignore: bool = True
) -> None:
    if y.numel() == 0:
        return
    valid = y != IGNORE_INDEX if allow_ignore else torch.ones_like(y, dtype=torch.bool)
    if not bool(valid.any()):
        raise UserError(f"{where}: all {what} are the ignore index {IGNORE_INDEX}")
    kept = y[valid]
    lo, hi = int(kept.min()), int(kept.max())
    if lo < 0:
        extra = f" (only {IGNORE_INDEX}, the ignore index, may be negative)" if allow_ignore else ""
        raise UserError(f"{where}: negative {what} {lo}{extra}")
    if num_outputs is not None and hi >= num_outputs:
        raise UserError(
            f"{where}: {what} go up to {hi} but there are only {num_outputs} classes (0..{num_outputs - 1})"
        )


def validate_labels(y: Tensor, num_outputs: int) -> None:
    """Check integer targets ``y`` against a model with ``num_outputs`` outputs (classes / vocabulary).

    Every label must be in ``0 .. num_outputs - 1`` or equal the ignore index ``-100``; float
    (regression) targets are not checked. Raises ``UserError`` naming the offending label.
    """
    if y.is_floating_point():
        return
    _check_labels(y, int(num_outputs), "data", "labels")


# ----------------------------------------------------------------------------------------------
# Splitting and batching


def train_eval_split(ds: Dataset, eval_fraction: float = 0.1, seed: int = 0) -> tuple[Dataset, Dataset]:
    """Split ``ds`` at random into ``(train, eval)`` with ``round(eval_fraction * len(ds))`` eval items.

    Deterministic given ``seed`` (its own ``torch.Generator``; the global RNG is untouched). Both
    parts keep the original order of their items and at least one item each.
    """
    if isinstance(eval_fraction, bool) or not 0.0 < float(eval_fraction) < 1.0:
        raise UserError(f"eval fraction must be strictly between 0 and 1, got {eval_fraction!r}")
    n = len(ds)
    if n < 2:
        raise UserError(f"data '{ds.name}' has {n} sample(s); a train/eval split needs at least 2")
    n_eval = min(max(round(n * float(eval_fraction)), 1), n - 1)
    gen = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(n, generator=gen)
    eval_idx, _ = torch.sort(perm[:n_eval])
    train_idx, _ = torch.sort(perm[n_eval:])
    return ds.subset(train_idx), ds.subset(eval_idx)


def iterate_batches(ds: Dataset | tuple[Tensor, Tensor], batch_size: int) -> list[tuple[Tensor, Tensor]]:
    """``(x, y)`` chunks of ``batch_size`` in order (no shuffling; the last one may be smaller)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise UserError(f"batch size must be a positive integer, got {batch_size!r}")
    x, y = (ds.x, ds.y) if isinstance(ds, Dataset) else ds
    return [
        (take_inputs(x, slice(i, i + batch_size)), y[i : i + batch_size])
        for i in range(0, len(y), batch_size)
    ]
