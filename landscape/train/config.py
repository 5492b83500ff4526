"""The configuration of one training run: :class:`RunConfig`, its defaults, validation and JSON form.

A run is fully described by its ``config.json`` (the resolved :class:`RunConfig`): model, data,
evaluation split, gradient rule, base optimizer, schedule, seed and diagnostics. Rebuilding the
model, the data and the optimizer from it gives the same numbers again.

Defaults (chosen for the built-in models on a small CPU):

* base optimizer: the rule's own (``RULES[method].base_optimizer``: AdamW for the SAM family,
  SGD for ``sgd``); Langevin methods (``sgld``, ``fsgld``) always step with SGLD.
* learning rate: AdamW 1e-3 (Functional-SAM Sec. 5 uses 1e-3 for every model size), SGD and
  SGLD 0.1; SGD momentum 0.9; weight decay 0.
* rho and every other method option: the optimizer module's defaults (``docs/optimizers.md``).
* LoRA methods (``lora``, ``fmlora``, ``efmlora``): adapters of rank 8 with alpha 16 on every
  ``nn.Linear`` (``add_lora``'s defaults), the base weights frozen (``docs/lora.md``).
* batch size: 64 samples for classification, 32 sequences for a language model; sequence
  length 64 (the built-in transformer's block size follows ``seq_len``).
* 500 steps, constant learning rate (``cosine``: linear warm-up, then cosine decay to 0).
* held-out evaluation: a random 10% of ``data`` (split seed 0, independent of ``seed``, so that
  every seed and every method is evaluated on the same items), or all of ``eval_data``.
* checkpoints every 100 steps and at the end; training loss logged every 10 steps; diagnostics off.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any

import torch

from landscape.adapters import LORA_METHODS, add_run_adapters
from landscape.bounds import SAMPLES, SEED, SEQ_LEN, TRAIN_STEPS
from landscape.data import Dataset, load_data, train_eval_split
from landscape.dtypes import DTYPES
from landscape.errors import UserError
from landscape.optim.options import Option, non_negative_int, option_flag, positive_int
from landscape.optim.rules import RETIRED_OPTIONS, RULES, run_options
from landscape.runs.layout import CONFIG_VERSION

__all__ = [
    "BASES",
    "CONFIG_VERSION",
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_LR",
    "LORA_METHODS",
    "METHOD_OPTIONS",
    "SCHEDULES",
    "RunConfig",
    "add_run_adapters",
    "expand_suite",
    "format_rho",
    "learning_rate_at",
    "method_takes",
    "parse_float_list",
]

BASES = ("adamw", "sgd")
LANGEVIN_BASE = "sgld"
SCHEDULES = ("constant", "cosine")
DEFAULT_LR = {"adamw": 1e-3, "sgd": 0.1, "sgld": 0.1}
DEFAULT_SGD_MOMENTUM = 0.9
DEFAULT_BATCH_SIZE = {"language_model": 32, "classification": 64, "regression": 64}
# Diagnostics every K steps run on a fixed subset of about this many targets (1024 digits, 16
# sequences of 64 bytes): measured 0.3-0.4 s (MLP) and 3.6-4.5 s (transformer) per diagnostic on
# one CPU thread with the budgets below, about 30% of the transformer's training time at K = 50.
DIAGNOSE_TARGETS = 1024
# The final analysis uses about this many targets of the training split (all 1617 training
# digits, 32 text sequences: about 30 s for the transformer with analyze's default budgets).
FINAL_ANALYSIS_TARGETS = 2048

METHOD_OPTIONS = tuple(option.name for option in run_options())
"""Options that only some methods take (every option of the rule specs, :data:`RULES`); a method
that does not take one ignores it (in a suite). Each is a :class:`RunConfig` field."""

_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+=-]*$")
_DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda|cuda:\d+)$")


def method_takes(method: str, option: str) -> bool:
    """Whether ``method`` uses ``option`` (one of ``METHOD_OPTIONS``): its rule spec lists it.

    (``beta``, SGLD's inverse temperature, is also taken by ``sgld``, whose rule is the plain
    gradient but whose base optimizer reads it; the adapter options by the :data:`LORA_METHODS`.)
    """
    return RULES[method].takes(option)


def _with_method_options(cls: type) -> type:
    """Give ``cls`` one field ``<type> | None = None`` per method option of the rule specs, after
    ``weight_decay`` (so that ``config.json`` keeps them flat: ``rho``, ``phi``, ...)."""
    annotations: dict[str, Any] = {}
    for name, annotation in cls.__dict__["__annotations__"].items():
        annotations[name] = annotation
        if name != "weight_decay":
            continue
        for option in run_options():
            if option.name in cls.__dict__["__annotations__"]:
                raise TypeError(f"method option {option.name!r} clashes with a RunConfig field")
            annotations[option.name] = f"{option.type.__name__} | None"
            setattr(cls, option.name, None)
    cls.__annotations__ = annotations
    return cls


def format_rho(rho: float) -> str:
    """Shortest text of ``rho`` for run names (``0.05`` -> ``"0.05"``, ``1.0`` -> ``"1"``)."""
    text = repr(float(rho))
    return text[:-2] if text.endswith(".0") else text


def parse_float_list(text: str | float | None, what: str) -> list[float]:
    """``"0.01,0.05"`` -> ``[0.01, 0.05]`` (a float passes through; ``None`` gives ``[]``)."""
    if text is None:
        return []
    if isinstance(text, int | float) and not isinstance(text, bool):
        return [float(text)]
    values = []
    for item in str(text).split(","):
        item = item.strip()
        if not item:
            continue
        try:
            value = float(item)
        except ValueError:
            raise UserError(
                f"{what} must be a number or a comma-separated list of numbers, got '{text}'"
            ) from None
        if not math.isfinite(value):
            raise UserError(f"{what} must be finite, got {item}")
        values.append(value)
    if not values:
        raise UserError(f"{what} is empty: give a number or a comma-separated list")
    return values


PROVENANCE_KEY = "provenance"
"""The key of ``config.json`` that records what made the run (:func:`landscape.provenance.provenance`);
a ``config.json`` written before it existed has none and loads and resumes as before."""


@dataclass
@_with_method_options
class RunConfig:
    """Everything needed to rebuild a run's model, data and optimizer (``None``: the default).

    Model and data: ``model`` (built-in name or ``module:factory``), ``model_kwargs``, ``data``
    (training data spec; default: the built-in model's data), ``loss`` (default: the model's),
    ``seq_len`` (text built-ins), ``eval_data`` (a separate evaluation set; then all of ``data``
    trains) or ``eval_fraction`` (random held-out part of ``data``, drawn with ``split_seed``),
    ``init`` (a checkpoint to start from), ``dtype``, ``device`` (where to train: ``auto``,
    ``cpu``, ``cuda``, ``cuda:N``, ``mps``; the model lives there, each batch moves there,
    checkpoints are saved from CPU copies).

    Optimizer: ``method`` (a rule of :data:`landscape.optim.RULES`), ``base`` (``adamw`` or
    ``sgd``; Langevin methods use SGLD), ``lr``, ``momentum`` (SGD), ``weight_decay``;
    ``steps``, ``batch_size``, ``schedule`` (``constant`` or ``cosine``) with ``warmup_steps``,
    ``seed``, ``shuffle``.

    Method options: one field per option of the rule specs (:data:`METHOD_OPTIONS`: ``rho``,
    ``rho_warmup``, ``phi``, ``micro_batch`` (m-SAM's m), ``lambda_`` and ``delta`` (RW-SAM; the
    flags ``--lambda``, ``--delta``), ``sigma``,
    ``beta``, ``eta``, ``ema_new_weight``, ``lora_normalization``, ...), inserted after
    ``weight_decay`` from the specs; their types, defaults, help and validation are the specs'
    (:mod:`landscape.optim.options`). The adapter options (LoRA methods only, see
    :func:`add_run_adapters`) are ``lora_rank``, ``lora_alpha`` and ``lora_targets``
    (comma-separated regular expressions searched in module paths; ``None``: every
    ``nn.Linear``). A model that already has LoRA layers (peft) keeps its own.

    Bookkeeping: ``checkpoint_every`` (0: only at the end and on Ctrl-C), ``log_every``,
    ``diagnose_every`` (0: off) with ``diagnose_samples`` and Lanczos/trace budgets, and the
    final analysis (``final_analysis``: default on when diagnosing; ``final_metrics``,
    ``final_samples``, ``max_memory``: the memory limit it is planned for, e.g. ``"12GB"``;
    default: most of the free device memory).
    """

    model: str | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    data: str | None = None
    loss: str | None = None
    seq_len: int = 64
    eval_data: str | None = None
    eval_fraction: float | None = 0.1
    split_seed: int = 0
    init: str | None = None
    dtype: str = "float32"
    device: str = "auto"
    method: str = "adamw"
    base: str | None = None
    lr: float | None = None
    momentum: float | None = None
    weight_decay: float = 0.0
    # the method options (rho, rho_warmup, phi, micro_batch, ...) are inserted here from RULES
    steps: int = 500
    batch_size: int | None = None
    schedule: str = "constant"
    warmup_steps: int = 0
    seed: int = 0
    shuffle: bool = True
    checkpoint_every: int = 100
    log_every: int = 10
    diagnose_every: int = 0
    diagnose_samples: int | None = None
    diagnose_max_iter: int = 20
    diagnose_trace_samples: int = 24
    final_analysis: bool | None = None
    final_metrics: str = "lambda_max,eigen,lambda_min,trace,ggn,tau"
    final_samples: int | None = None
    max_memory: str | None = None
    name: str | None = None
    version: int = CONFIG_VERSION

    # ------------------------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the contents of ``config.json``)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, payload: dict[str, Any], where: str = "config") -> RunConfig:
        """Rebuild a config from :meth:`to_dict`'s output; unknown keys raise ``UserError``.

        A retired option (:data:`landscape.optim.rules.RETIRED_OPTIONS`) left unset by an older
        ``config.json`` is dropped; one that is set raises ``UserError`` naming what replaced it."""
        if not isinstance(payload, dict):
            raise UserError(f"{where} is not a JSON object")
        # what made the run (config.json since provenance was recorded): not part of the config
        payload = {k: v for k, v in payload.items() if k != PROVENANCE_KEY}
        known = {f.name for f in dataclasses.fields(cls)}
        retired = [key for key in payload if key in RETIRED_OPTIONS and key not in known]
        for key in retired:
            if payload[key] is not None:
                raise UserError(f"{where} sets {key} = {payload[key]!r}, {RETIRED_OPTIONS[key]}")
        payload = {key: value for key, value in payload.items() if key not in retired}
        unknown = sorted(set(payload) - known)
        if unknown:
            raise UserError(f"{where} has unknown key(s) {', '.join(unknown)}")
        if payload.get("version", CONFIG_VERSION) != CONFIG_VERSION:
            raise UserError(
                f"{where} has version {payload['version']}; this landscape reads {CONFIG_VERSION}"
            )
        return cls(**payload)

    # ------------------------------------------------------------------------------ resolution
    @property
    def base_optimizer(self) -> str:
        """The optimizer that steps: ``sgld`` for Langevin methods, else ``base`` or the rule's."""
        own = RULES[self.method].base_optimizer if self.method in RULES else "adamw"
        if own == LANGEVIN_BASE:
            return LANGEVIN_BASE
        return self.base or own

    def validate(self) -> None:
        """Check every field; raise ``UserError`` with one line naming the first bad one."""
        self._validate_choices()
        self._validate_counts()
        self._validate_optimizer()
        for option in run_options():  # each method option by its own declaration
            option.validate(getattr(self, option.name, None))
        if self.eval_data is None:
            if self.eval_fraction is None or not 0.0 < float(self.eval_fraction) < 1.0:
                raise UserError(f"--eval-fraction must be strictly between 0 and 1, got {self.eval_fraction}")
        if self.name is not None and not _NAME_PATTERN.match(self.name):
            raise UserError(f"run name '{self.name}' may only hold letters, digits and . _ + = -")
        if not isinstance(self.model_kwargs, dict):
            raise UserError("model_kwargs must be a dict")

    def _validate_choices(self) -> None:
        """Method, base optimizer (and whether the method allows it), dtype and schedule."""
        if self.method not in RULES:
            raise UserError(f"unknown method '{self.method}' (choose from {', '.join(RULES)})")
        if self.base is not None and self.base not in BASES:
            raise UserError(f"unknown base optimizer '{self.base}' (choose from {', '.join(BASES)})")
        if RULES[self.method].base_optimizer == LANGEVIN_BASE and self.base is not None:
            raise UserError(f"method {self.method} brings its own update (SGLD); drop --base")
        if self.method.startswith("precond-") and self.base_optimizer != "adamw":
            raise UserError(f"method {self.method} reads AdamW's second moments; it needs --base adamw")
        if self.dtype not in DTYPES:
            raise UserError(f"unknown dtype '{self.dtype}' (choose from {', '.join(DTYPES)})")
        if not isinstance(self.device, str) or not _DEVICE_PATTERN.match(self.device.strip().lower()):
            # the spelling only: whether this machine has the device is checked where the run starts
            raise UserError(f"invalid device '{self.device}' (choose from auto, cpu, cuda, cuda:N, mps)")
        if self.max_memory is not None:
            from landscape.curvature.budget import parse_memory

            parse_memory(self.max_memory)
        if self.schedule not in SCHEDULES:
            raise UserError(f"unknown schedule '{self.schedule}' (choose from {', '.join(SCHEDULES)})")

    def _validate_counts(self) -> None:
        """Steps, sizes and intervals (positive or non-negative integers)."""
        _positive_int(self.steps, "steps")
        _positive_int(self.seq_len, "seq-len")
        _positive_int(self.log_every, "log-every")
        _positive_int(self.diagnose_max_iter, "diagnose max-iter")
        for value, what in (
            (self.batch_size, "batch-size"),
            (self.diagnose_samples, "diagnose-samples"),
            (self.final_samples, "final-samples"),
        ):
            if value is not None:
                _positive_int(value, what)
                SAMPLES.check(value, f"--{what}")
        TRAIN_STEPS.check(self.steps, "--steps")
        SEQ_LEN.check(self.seq_len, "--seq-len")
        SEED.check(self.seed, "--seed")
        if self.diagnose_trace_samples < 2:
            raise UserError(f"diagnose trace samples must be at least 2, got {self.diagnose_trace_samples}")
        for value, what in (
            (self.checkpoint_every, "checkpoint-every"),
            (self.diagnose_every, "diagnose-every"),
            (self.warmup_steps, "warmup"),
        ):
            if value is not None:
                non_negative_int(value, f"--{what}")
        if self.warmup_steps > self.steps:
            raise UserError(f"--warmup ({self.warmup_steps}) exceeds --steps ({self.steps})")

    def _validate_optimizer(self) -> None:
        """Learning rate, momentum and weight decay."""
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise UserError(f"--lr must be positive, got {self.lr}")
        if self.momentum is not None and not 0.0 <= self.momentum < 1.0:
            raise UserError(f"--momentum must be in [0, 1), got {self.momentum}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise UserError(f"--weight-decay must be non-negative, got {self.weight_decay}")

    @property
    def uses_lora(self) -> bool:
        """Whether the run trains low-rank adapters (its method is one of :data:`LORA_METHODS`)."""
        return self.method in LORA_METHODS

    def unused_options(self) -> list[str]:
        """Options that are set but not used: method options ``method`` does not take, and
        ``momentum`` unless the base optimizer is SGD."""
        unused = [
            o.name
            for o in run_options()
            if getattr(self, o.name) is not None and not method_takes(self.method, o.name)
        ]
        if self.momentum is not None and self.base_optimizer != "sgd":
            unused.append("momentum")
        return unused

    def resolved(self, *, strict: bool = True, trust_checkpoint: bool = False) -> RunConfig:
        """A validated copy with the static defaults filled in.

        Fills ``base``, ``lr``, ``momentum`` (SGD), the method options with the method's own
        defaults, the default data and loss of a built-in model, the transformer's ``block_size``
        (= ``seq_len``) and ``name`` (the method). Method options that
        ``method`` does not take raise ``UserError`` when ``strict``, else they are dropped
        (a suite shares its options among methods that take different ones). ``batch_size`` and
        the diagnostic sizes depend on the data and are filled by the training loop.

        Without ``model``, an ``init`` checkpoint's stored config supplies model, data and loss;
        an import path stored there runs only when named here or with ``trust_checkpoint``
        (:mod:`landscape.trust`).
        """
        self.validate()
        unused = self.unused_options()
        if unused and strict:
            flags = ", ".join(option_flag(o) for o in unused)
            raise UserError(f"method {self.method} does not take {flags}")
        out = dataclasses.replace(self, model_kwargs=dict(self.model_kwargs))
        for option in unused:
            setattr(out, option, None)
        base = out.base_optimizer
        out.base = base if base != LANGEVIN_BASE else None
        if out.lr is None:
            out.lr = DEFAULT_LR[base]
        if out.momentum is None and base == "sgd":
            out.momentum = DEFAULT_SGD_MOMENTUM
        if out.eval_data is not None:
            out.eval_fraction = None
        from landscape.models import list_models, model_info

        if out.model is None and out.init is not None:
            _take_model_from_checkpoint(out, trust_checkpoint)
        if out.model is None:
            names = ", ".join(list_models())
            raise UserError(
                f"--model is required: a built-in ({names}) or an import path package.module:factory"
            )
        if out.model in list_models():
            info = model_info(out.model)
            out.data = out.data or info.default_data
            out.loss = out.loss or info.loss
            if out.model == "transformer" and out.seq_len != 64:
                out.model_kwargs.setdefault("block_size", out.seq_len)
        elif ":" not in out.model and "." not in out.model:
            from landscape.models import build_model

            build_model(out.model)  # not an import path either: raises the zoo's "unknown model"
        elif out.data is None:
            raise UserError("--data is required for a model given by import path")
        out.loss = out.loss or "cross_entropy"
        for option in RULES[out.method].options:  # write the method's own defaults into config.json
            if getattr(out, option.name) is None:
                setattr(out, option.name, option.default)
        out.name = out.name or out.method
        return out

    # ------------------------------------------------------------------------- derived objects
    def rule_options(self) -> dict[str, Any]:
        """Keyword arguments of ``make_rule`` (only the options the method's rule takes; seed
        included)."""
        return {"seed": self.seed, **self._options_for("rule")}

    def _options_for(self, target: str) -> dict[str, Any]:
        """The method's options that go to ``target`` and are set, under their keywords."""
        options: list[Option] = [o for o in RULES[self.method].options if target in o.targets]
        return {o.kwarg: getattr(self, o.name) for o in options if getattr(self, o.name) is not None}

    def optimizer_options(self) -> dict[str, Any]:
        """Keyword arguments of ``make_base_optimizer(self.base_optimizer, ...)``."""
        base = self.base_optimizer
        lr = float(self.lr if self.lr is not None else DEFAULT_LR[base])
        options: dict[str, Any] = {"lr": lr, "weight_decay": float(self.weight_decay)}
        if base == "sgd":
            options["momentum"] = float(self.momentum if self.momentum is not None else DEFAULT_SGD_MOMENTUM)
        if base == LANGEVIN_BASE:
            options["seed"] = self.seed
        # the method's options that the base optimizer reads (SGLD's beta)
        options.update({k: float(v) for k, v in self._options_for("optimizer").items()})
        return options

    def torch_dtype(self) -> torch.dtype:
        """The compute dtype."""
        return DTYPES[self.dtype]

    def checkpoint_config(self) -> dict[str, Any]:
        """The ``config`` stored in checkpoints: this config plus what ``landscape.resolve`` reads.

        ``resolve_inputs`` rebuilds the model from ``model``/``model_kwargs`` and loads ``data``
        with ``seq_len``; ``train_split`` tells it to keep the training part of a split, so that
        ``landscape analyze runs/x/final.pt`` measures the curvature of the training loss.
        """
        payload = self.to_dict()
        if self.eval_data is None and self.eval_fraction is not None:
            payload["train_split"] = {"eval_fraction": self.eval_fraction, "seed": self.split_seed}
        return payload


def _take_model_from_checkpoint(config: RunConfig, trust: bool) -> None:
    """Fill model, model_kwargs and the unset data options from the run config stored in ``init``
    (import paths stored there only when ``trust`` or named in ``config``)."""
    from landscape.checkpoints import read_checkpoint_metadata
    from landscape.trust import check_stored_specs

    assert config.init is not None
    stored = read_checkpoint_metadata(config.init) or {}
    if not stored.get("model"):
        return
    used = ["model"] + [key for key in ("data", "loss") if getattr(config, key) is None]
    check_stored_specs(
        stored, f"--init checkpoint {config.init}", keys=used, allowed=[config.data, config.loss], trust=trust
    )
    config.model = stored["model"]
    config.model_kwargs = dict(stored.get("model_kwargs") or {})
    config.data = config.data or stored.get("data")
    config.loss = config.loss or stored.get("loss")


def _positive_int(value: Any, what: str) -> int:
    positive_int(value, f"--{what}")
    return value


def learning_rate_at(config: RunConfig, step: int) -> float:
    """The learning rate of update ``step`` (0-based).

    ``constant``: ``lr`` after a linear warm-up of ``warmup_steps`` (``lr (step + 1) / warmup``).
    ``cosine``: the same warm-up, then ``lr (1 + cos(pi t)) / 2`` with ``t`` going from 0 to 1
    over the remaining steps (Loshchilov & Hutter 2017, without restarts; it reaches 0 at the
    last update).
    """
    lr = float(config.lr if config.lr is not None else DEFAULT_LR[config.base_optimizer])
    warm = config.warmup_steps
    if warm > 0 and step < warm:
        return lr * (step + 1) / warm
    if config.schedule == "cosine":
        span = max(config.steps - warm, 1)
        progress = min(max(step - warm, 0) / span, 1.0)
        return lr * 0.5 * (1.0 + math.cos(math.pi * progress))
    return lr


def load_splits(config: RunConfig) -> tuple[Dataset, Dataset]:
    """``(train, eval)`` data of a resolved config.

    With ``eval_data`` all of ``data`` trains; otherwise ``train_eval_split(data, eval_fraction,
    split_seed)`` (both parts keep the source's order).
    """
    dtype = config.torch_dtype()
    assert config.data is not None, "resolve the config first"
    data = load_data(config.data, seq_len=config.seq_len, dtype=dtype)
    if config.eval_data is not None:
        return data, load_data(config.eval_data, seq_len=config.seq_len, dtype=dtype)
    assert config.eval_fraction is not None
    return train_eval_split(data, config.eval_fraction, config.split_seed)


def expand_suite(
    base: RunConfig, methods: list[str], rhos: list[float], *, trust_checkpoint: bool = False
) -> list[RunConfig]:
    """The runs of a suite: every method, and for methods that take rho every rho of the sweep.

    All runs share the seed (so the same initial weights and data order) and every other
    option; an option is dropped for the methods that do not take it, and one that none of the
    methods takes raises ``UserError``. Names are the method, with ``-rho<value>`` when several
    rho values are swept (e.g. ``sam-rho0.05``). At least one run. ``trust_checkpoint``: see
    :meth:`RunConfig.resolved`.
    """
    methods = methods or [base.method]
    duplicated = sorted({m for m in methods if methods.count(m) > 1})
    if duplicated:
        raise UserError(f"method(s) {', '.join(duplicated)} given more than once")
    for method in methods:
        if method not in RULES:
            raise UserError(f"unknown method '{method}' (choose from {', '.join(RULES)})")
    rho_values: list[float | None] = list(rhos) if rhos else [base.rho]
    if len(set(rho_values)) != len(rho_values):
        raise UserError("--rho lists a value more than once")
    candidates = [dataclasses.replace(base, method=m, rho=None) for m in methods]
    for candidate in candidates:
        candidate.validate()
    for option in (*(o.name for o in run_options()), "momentum"):
        value = rho_values[0] if option == "rho" else getattr(base, option)
        used = [
            c.base_optimizer == "sgd" if option == "momentum" else method_takes(c.method, option)
            for c in candidates
        ]
        if value is not None and not any(used):
            flag = option_flag(option)
            raise UserError(
                f"{flag} is not used by {'method' if len(methods) == 1 else 'any of'} {', '.join(methods)}"
            )
    runs: list[RunConfig] = []
    for candidate in candidates:
        sweep = rho_values if method_takes(candidate.method, "rho") else [None]
        for rho in sweep:
            run = dataclasses.replace(candidate, rho=rho)
            name = candidate.method
            if rho is not None and len(rho_values) > 1:
                name = f"{name}-rho{format_rho(rho)}"
            resolved = run.resolved(strict=False, trust_checkpoint=trust_checkpoint)
            runs.append(dataclasses.replace(resolved, name=name))
    return runs
