"""Lightning: sharpness tracked every N steps of ``Trainer.fit``, logged to the trainer's loggers.

:class:`LightningSharpnessCallback` measures the module being fitted (or one of its submodules,
``module="net"``) on a fixed probe batch every ``every`` optimizer steps
(:class:`~landscape.integrations.SharpnessTracker`) and sends the values to every logger of the
trainer (``CSVLogger``, ``TensorBoardLogger``, ``WandbLogger``: ``logger.log_metrics`` at the
trainer's global step, under ``sharpness/<key>``), and with ``out`` writes a run folder that
``landscape report`` reads (``train_loss`` from the ``loss`` that ``training_step`` returns).

To train with a gradient rule under Lightning, return a
:class:`~landscape.optim.SharpnessAwareOptimizer` from ``configure_optimizers``: automatic
optimization drives it through the closure protocol (``docs/optimizers.md``).

Importing this module needs ``lightning`` (``pip install 'landscape[lightning]'``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from landscape.errors import UserError
from landscape.integrations.optional import require
from landscape.integrations.probe import DEFAULT_PROBE_SIZE, probe_from_loader
from landscape.integrations.tracker import FINAL_METRICS, SharpnessTracker, unwrap_optimizer
from landscape.losses import LossLike
from landscape.optim import SharpnessAwareOptimizer

pl = require("lightning.pytorch", "landscape.integrations.lightning")

__all__ = ["PREFIX", "LightningSharpnessCallback"]

PREFIX = "sharpness/"
"""The prefix of the logged values (``sharpness/lambda_max``)."""


def _batch_loss(outputs: Any) -> Tensor | float | None:
    """The loss ``training_step`` returned (a tensor, or a dict's ``loss``)."""
    if isinstance(outputs, Mapping):
        outputs = outputs.get("loss")
    return outputs if isinstance(outputs, Tensor | float | int) else None


class LightningSharpnessCallback(pl.Callback):
    """Track sharpness every ``every`` optimizer steps of a Lightning ``Trainer``.

    The probe batch is ``probe`` (``(inputs, targets)`` or a dict with ``labels``), or
    ``probe_size`` items of the training data set drawn with ``seed`` and collated by the training
    dataloader's collate function; ``module`` names the submodule that maps the inputs to the
    outputs (default: the LightningModule itself, through its ``forward``); ``loss`` is the loss of
    those outputs (default ``"cross_entropy"``; ``"model"`` for a dict with labels). The other
    options are those of :class:`SharpnessTracker`.
    """

    def __init__(
        self,
        every: int = 50,
        out: str | Path | None = None,
        *,
        probe: Any = None,
        probe_size: int = DEFAULT_PROBE_SIZE,
        module: str | None = None,
        loss: LossLike | None = None,
        metrics: str | Sequence[str] | None = None,
        seed: int = 0,
        eval_batch: Any = None,
        log_every: int | None = None,
        model_spec: str | None = None,
        model_kwargs: Mapping[str, Any] | None = None,
        final_metrics: str | Sequence[str] | None = FINAL_METRICS,
        final_options: Mapping[str, Any] | None = None,
        max_iter: int | None = None,
        trace_samples: int | None = None,
        config: Mapping[str, Any] | None = None,
        resume: bool = False,
    ) -> None:
        super().__init__()
        self.every, self.out, self.probe, self.probe_size = every, out, probe, probe_size
        self.module, self.seed = module, seed
        self.options = {
            "loss": loss,
            "metrics": metrics,
            "eval_batch": eval_batch,
            "log_every": log_every,
            "model_spec": model_spec,
            "model_kwargs": model_kwargs,
            "final_metrics": final_metrics,
            "final_options": final_options,
            "max_iter": max_iter,
            "trace_samples": trace_samples,
            "resume": resume,
        }
        self.extra = dict(config or {})
        self.tracker: SharpnessTracker | None = None
        self._trainer: Any = None

    def _measured_module(self, pl_module: nn.Module) -> nn.Module:
        if self.module is None:
            return pl_module
        found = pl_module.get_submodule(self.module) if self.module else pl_module
        if not isinstance(found, nn.Module):  # pragma: no cover - get_submodule returns modules
            raise UserError(f"module={self.module!r} is no submodule of {type(pl_module).__name__}")
        return found

    # -------------------------------------------------------------------------- the events
    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self._trainer = trainer
        optimizer = trainer.optimizers[0] if trainer.optimizers else None
        if trainer.accumulate_grad_batches > 1 and isinstance(
            unwrap_optimizer(optimizer), SharpnessAwareOptimizer
        ):
            raise UserError(
                f"accumulate_grad_batches={trainer.accumulate_grad_batches} with a SharpnessAwareOptimizer: a "
                "sharpness-aware rule forms the gradient of one batch and does not accumulate; use 1 and a larger batch"
            )
        probe = self.probe
        if probe is None:
            probe = probe_from_loader(trainer.train_dataloader, self.probe_size, self.seed)
        seed = os.environ.get("PL_GLOBAL_SEED")
        config = {
            "source": "lightning.pytorch.Trainer",
            "seed": int(seed) if seed and seed.isdigit() else self.seed,
            "max_steps": trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None,
        } | self.extra
        try:
            model = self._measured_module(pl_module)
        except AttributeError:
            raise UserError(f"module={self.module!r} is no submodule of {type(pl_module).__name__}") from None
        self.tracker = SharpnessTracker(
            model,
            probe,
            every=self.every,
            out=self.out,
            seed=self.seed,
            optimizer=optimizer,
            config=config,
            loggers=[self._log],
            **self.options,
        )
        self.tracker.step(trainer.global_step)

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.tracker is not None:
            self.tracker.step(trainer.global_step, _batch_loss(outputs))

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        if self.tracker is not None:
            self.tracker.finish(trainer.global_step)

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        if self.tracker is not None:
            self.tracker.close()

    def _log(self, values: dict[str, float], step: int) -> None:
        """To every logger of the trainer, at the trainer's global step."""
        trainer = self._trainer
        if trainer is None or not trainer.is_global_zero:
            return
        for logger in trainer.loggers:
            logger.log_metrics({PREFIX + key: value for key, value in values.items()}, step=step)
