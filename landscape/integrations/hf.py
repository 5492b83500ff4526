"""Hugging Face ``Trainer``: train with any gradient rule, track sharpness while it trains.

* :class:`SharpnessAwareTrainer` is a ``transformers.Trainer`` whose optimizer is a
  :class:`~landscape.optim.SharpnessAwareOptimizer` (the optimizer class and options the
  ``TrainingArguments`` choose, with the Trainer's weight-decay groups) and whose ``training_step``
  forms the rule's gradient through the closure protocol (``compute_loss`` and the accelerator's
  ``backward``, so label smoothing, a custom ``compute_loss`` and fp16 loss scaling apply). The
  Trainer then clips the gradient (``max_grad_norm``), takes the base step, steps its LR schedule
  and logs as usual. ``gradient_accumulation_steps`` must be 1: a rule forms the gradient of one
  batch at perturbed weights, it does not accumulate.
* :class:`HFSharpnessCallback` is a ``TrainerCallback`` that measures sharpness every ``every``
  steps on a fixed probe batch (:class:`~landscape.integrations.SharpnessTracker`) and logs the
  values through the Trainer's ``log``, so every logging callback (TensorBoard, Weights & Biases,
  CSV, the printer) sees them under ``sharpness/<key>``; with ``out`` it writes a run folder that
  ``landscape report`` reads.

Importing this module needs ``transformers`` (``pip install 'landscape[hf]'``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from landscape.errors import UserError
from landscape.integrations.optional import require
from landscape.integrations.probe import DEFAULT_PROBE_SIZE, probe_from_loader
from landscape.integrations.tracker import FINAL_METRICS, SharpnessTracker, unwrap_optimizer
from landscape.losses import LossLike
from landscape.optim import GradientRule, SharpnessAwareOptimizer

transformers = require("transformers", "landscape.integrations.hf")

__all__ = ["PREFIX", "HFSharpnessCallback", "SharpnessAwareTrainer"]

PREFIX = "sharpness/"
"""The prefix of the values logged through the Trainer (``sharpness/lambda_max``)."""

_ACCUMULATION = (
    "SharpnessAwareTrainer needs gradient_accumulation_steps=1 (got {}): a sharpness-aware rule forms "
    "the gradient of one batch at perturbed weights and does not accumulate; raise "
    "per_device_train_batch_size instead"
)


class HFSharpnessCallback(transformers.TrainerCallback):
    """Track sharpness every ``every`` optimizer steps of a Hugging Face ``Trainer``.

    The probe batch is ``probe`` (a collated batch: a dict with ``labels``, or ``(inputs,
    targets)``), or ``probe_size`` items of the training data set drawn with ``seed`` (default: the
    Trainer's ``args.seed``) and collated by the Trainer's collator. ``loss`` defaults to the
    model's own (``"model"``, from the labels). Measurements go through the Trainer's ``log`` as
    ``sharpness/<key>`` and, with ``out``, into a run folder (``metrics.jsonl`` with the Trainer's
    logged ``loss`` as ``train_loss``; ``final.pt``, ``analysis.json`` and ``summary.json`` when
    training ends). The other options are those of :class:`SharpnessTracker`.

    The callback logs through its Trainer, so it must know it: ``callback.attach(trainer)`` adds
    it to the Trainer (a :class:`SharpnessAwareTrainer` attaches the callbacks it is given itself).
    """

    def __init__(
        self,
        every: int = 50,
        out: str | Path | None = None,
        *,
        probe: Any = None,
        probe_size: int = DEFAULT_PROBE_SIZE,
        loss: LossLike | None = None,
        metrics: str | Sequence[str] | None = None,
        seed: int | None = None,
        eval_batch: Any = None,
        model_spec: str | None = None,
        model_kwargs: Mapping[str, Any] | None = None,
        final_metrics: str | Sequence[str] | None = FINAL_METRICS,
        final_options: Mapping[str, Any] | None = None,
        max_iter: int | None = None,
        trace_samples: int | None = None,
        config: Mapping[str, Any] | None = None,
        resume: bool = False,
    ) -> None:
        self.every, self.out, self.probe, self.probe_size = every, out, probe, probe_size
        self.options = {
            "loss": loss,
            "metrics": metrics,
            "eval_batch": eval_batch,
            "model_spec": model_spec,
            "model_kwargs": model_kwargs,
            "final_metrics": final_metrics,
            "final_options": final_options,
            "max_iter": max_iter,
            "trace_samples": trace_samples,
            "resume": resume,
        }
        self.seed = seed
        self.extra = dict(config or {})
        self.trainer: Any = None
        self.tracker: SharpnessTracker | None = None

    def attach(self, trainer: Any) -> HFSharpnessCallback:
        """Log through ``trainer`` and add this callback to it (once); returns the callback."""
        self.trainer = trainer
        if self not in trainer.callback_handler.callbacks:
            trainer.add_callback(self)
        return self

    # -------------------------------------------------------------------------- the events
    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.trainer is None:
            raise UserError(
                "HFSharpnessCallback logs through its Trainer: add it with callback.attach(trainer) "
                "(a SharpnessAwareTrainer attaches it itself)"
            )
        trainer = self.trainer
        seed = args.seed if self.seed is None else self.seed
        probe = (
            self.probe
            if self.probe is not None
            else probe_from_loader(
                kwargs.get("train_dataloader") or trainer.get_train_dataloader(), self.probe_size, seed
            )
        )
        config = {
            "source": f"{type(trainer).__module__}.{type(trainer).__qualname__}",
            "seed": args.seed,
            "batch_size": args.per_device_train_batch_size,
            "steps": None,
            "max_steps": state.max_steps,
            "schedule": str(getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)),
            "max_grad_norm": args.max_grad_norm,
            "log_every": args.logging_steps if isinstance(args.logging_steps, int) else None,
        } | self.extra
        self.tracker = SharpnessTracker(
            trainer.model,
            probe,
            every=self.every,
            out=self.out,
            seed=seed,
            optimizer=kwargs.get("optimizer") or trainer.optimizer,
            config=config,
            loggers=[self._log],
            **self.options,
        )
        self.tracker.step(state.global_step)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.tracker is not None:
            self.tracker.step(state.global_step)

    def on_log(
        self, args: Any, state: Any, control: Any, logs: Mapping[str, Any] | None = None, **kwargs: Any
    ) -> None:
        if self.tracker is not None and logs and "loss" in logs:
            self.tracker.log(state.global_step, train_loss=logs["loss"], lr=logs.get("learning_rate"))

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.tracker is not None:
            self.tracker.finish(state.global_step)

    def _log(self, values: dict[str, float], step: int) -> None:
        """Through ``Trainer.log``: into ``state.log_history`` and every callback's ``on_log``."""
        self.trainer.log({PREFIX + key: value for key, value in values.items()})


class SharpnessAwareTrainer(transformers.Trainer):
    """A ``transformers.Trainer`` that trains with a gradient rule of :mod:`landscape.optim`.

    ``rule`` (a name of :data:`landscape.optim.RULES` such as ``"func-sam"``, or a rule object)
    with ``rho`` and ``rule_options``; the base optimizer is the one the ``TrainingArguments``
    choose (``optim``, ``learning_rate``, ``weight_decay`` with the Trainer's no-decay groups,
    Adam's betas and epsilon). Or pass ``optimizers=(SharpnessAwareOptimizer(model, ...), None)``
    and no ``rule``. Every other argument is the ``Trainer``'s; an :class:`HFSharpnessCallback`
    among ``callbacks`` is attached to this trainer.
    """

    def __init__(
        self,
        *args: Any,
        rule: str | GradientRule | None = None,
        rho: float | None = None,
        rule_options: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if self.args.gradient_accumulation_steps != 1:
            raise UserError(_ACCUMULATION.format(self.args.gradient_accumulation_steps))
        if self.args.n_gpu > 1:
            raise UserError(
                f"SharpnessAwareTrainer runs one model per process; {self.args.n_gpu} GPUs in one process "
                "(DataParallel) are not supported: launch one process per GPU with torchrun"
            )
        given = unwrap_optimizer(self.optimizer) if self.optimizer is not None else None
        if self.optimizer is not None and not isinstance(given, SharpnessAwareOptimizer):
            raise UserError(
                f"SharpnessAwareTrainer steps a SharpnessAwareOptimizer, got {type(self.optimizer).__name__} "
                "in optimizers=: pass rule= instead (the base optimizer then follows the TrainingArguments)"
            )
        if given is not None and rule is not None:
            raise UserError("pass the rule either as rule= or inside the SharpnessAwareOptimizer, not both")
        if given is None and rule is None:
            raise UserError(
                "SharpnessAwareTrainer needs rule= (e.g. 'func-sam') or "
                "optimizers=(SharpnessAwareOptimizer(model, ...), None)"
            )
        self.rule_spec = {"rule": rule, "rho": rho, "rule_options": dict(rule_options or {})}
        for callback in self.callback_handler.callbacks:
            if isinstance(callback, HFSharpnessCallback):
                callback.trainer = self

    def add_callback(self, callback: Any) -> None:
        """As the Trainer's; an :class:`HFSharpnessCallback` is attached to this trainer."""
        super().add_callback(callback)
        if isinstance(callback, HFSharpnessCallback):
            callback.trainer = self

    def create_optimizer(self, model: nn.Module | None = None) -> Any:
        """The :class:`SharpnessAwareOptimizer` of the rule over the Trainer's parameter groups."""
        if self.optimizer is not None:
            return self.optimizer
        model = self.model if model is None else model
        decay = set(self.get_decay_parameter_names(model))
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        groups = [
            {"params": [p for n, p in named if n in decay], "weight_decay": self.args.weight_decay},
            {"params": [p for n, p in named if n not in decay], "weight_decay": 0.0},
        ]
        if self.optimizer_cls_and_kwargs is not None:
            cls, options = self.optimizer_cls_and_kwargs
        else:
            cls, options = self.get_optimizer_cls_and_kwargs(self.args, model)
        options = dict(options)
        special = sorted({"params", "model", "optimizer_dict"} & set(options))
        if special or not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
            raise UserError(
                f"optim={self.args.optim} is not a torch.optim optimizer class over parameter groups; "
                "a sharpness-aware rule needs one (e.g. optim='adamw_torch' or 'sgd')"
            )
        self.optimizer = SharpnessAwareOptimizer(
            model,
            cls,
            rule=self.rule_spec["rule"],
            rho=self.rule_spec["rho"],
            rule_options=self.rule_spec["rule_options"] or None,
            params=[g for g in groups if g["params"]],
            **options,
        )
        return self.optimizer

    def training_step(self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: Any = None) -> Any:
        """Form the rule's gradient of the batch (the closure runs ``compute_loss`` and the
        accelerator's ``backward`` once per pass of the rule); the Trainer clips it, steps the
        base optimizer and the schedule. Returns the batch loss at the unperturbed weights."""
        model.train()
        inputs = self._prepare_inputs(inputs)
        optimizer = unwrap_optimizer(self.optimizer)
        assert isinstance(optimizer, SharpnessAwareOptimizer)

        def closure() -> Any:
            with self.compute_loss_context_manager():
                loss = self.compute_loss(model, inputs)
            self.accelerator.backward(loss)
            return loss.detach()

        loss = optimizer.compute_gradient(closure)
        return loss.detach().to(self.args.device)
