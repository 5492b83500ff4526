"""Sharpness tracked in a hand-written training loop, and the engine of the framework callbacks.

Every ``every`` steps :class:`SharpnessTracker` measures the model on a fixed probe batch with
the registry's training diagnostics (:func:`landscape.train.diagnostics.diagnose`, the budgets the
metrics declare for training): ``lambda_max`` (the top Hessian eigenvalue by Lanczos, Lanczos
1950, with ``lambda_max_residual``, the residual norm of its Ritz pair), ``trace`` (tr H, XTrace:
Epperly, Tropp & Webber 2024, arXiv 2301.07825) with ``trace_stderr``, ``ggn_lambda_max``,
``ggn_trace`` (tr G) and ``functional_trace`` (tr H_F = tr(H - G)), and ``tau_logit``,
``tau_func``, ``tau_cross`` (the split of the sharpness gradient ``H g`` into its Gauss-Newton and
functional parts; Singh, Mobahi, Agarwala & Dauphin 2025, arXiv 2502.02407, Eq. 8-9), plus
``diag_loss``, ``grad_norm`` and ``weight_norm``, and ``eval_loss``/``eval_accuracy`` on a held-out
batch when one is given. A metric registered later with a training diagnostic (the gradient-noise
trace, say) is measured too; ``metrics=`` chooses among them.

The values go to the ``loggers`` (the framework's: TensorBoard, W&B, CSV) and, with ``out``, to a
run folder (:class:`~landscape.integrations.folder.RunFolder`) that ``landscape report`` compares
like ``landscape train`` runs. Measuring leaves the model's modes, ``requires_grad`` flags,
parameters, gradients and the global RNG as found.
"""

from __future__ import annotations

import hashlib
import math
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from landscape import runs
from landscape.data import Dataset, load_data, primary_inputs
from landscape.errors import UserError
from landscape.evaluation import evaluate
from landscape.integrations.folder import EVAL_FILE, PROBE_FILE, RunFolder
from landscape.integrations.probe import split_batch
from landscape.integrations.rebuild import class_path, model_spec
from landscape.losses import LossLike
from landscape.optim import SharpnessAwareOptimizer
from landscape.preserve import preserved
from landscape.provenance import provenance
from landscape.train.config import RunConfig
from landscape.train.diagnostics import check_diagnostic_metrics, diagnose, weight_norm
from landscape.train.final import RunSummary

__all__ = ["FINAL_METRICS", "Logger", "SharpnessTracker", "describe_optimizer"]

FINAL_METRICS: str = RunConfig.__dataclass_fields__["final_metrics"].default
"""The metrics of the final analysis (``analysis.json``), as for ``landscape train``."""

Logger = Callable[[dict[str, float], int], None]
"""Where measured values go besides the run folder: ``logger(values, step)``."""


def describe_optimizer(optimizer: Any) -> dict[str, Any]:
    """What a run's config records of its optimizer: ``method`` (the gradient rule of a
    :class:`~landscape.optim.SharpnessAwareOptimizer`, else the optimizer's class in lower case:
    ``adamw``, ``sgd``), ``base``, ``lr``, ``weight_decay`` and ``rho``. Wrappers (Hugging Face's
    accelerate, Lightning) are looked through."""
    inner = unwrap_optimizer(optimizer)
    if inner is None:
        return {}
    if isinstance(inner, SharpnessAwareOptimizer):
        method, base = inner.rule.name, type(inner.base_optimizer).__name__.lower()
        rho = getattr(inner.rule, "rho", None)
    else:
        method = base = type(inner).__name__.lower()
        rho = None
    group = inner.param_groups[0] if inner.param_groups else {}
    return {
        "method": method,
        "base": base,
        "lr": _number(group.get("lr")),
        "weight_decay": _number(group.get("weight_decay")),
        "rho": rho,
    }


def unwrap_optimizer(optimizer: Any) -> torch.optim.Optimizer | None:
    """The optimizer inside accelerate's or Lightning's wrapper (itself when not wrapped)."""
    for _ in range(4):
        inner = getattr(optimizer, "optimizer", None) or getattr(optimizer, "_optimizer", None)
        if isinstance(optimizer, SharpnessAwareOptimizer) or not isinstance(inner, torch.optim.Optimizer):
            break
        optimizer = inner
    return optimizer if isinstance(optimizer, torch.optim.Optimizer) else None


def _number(value: Any) -> float | None:
    if isinstance(value, Tensor) and value.numel() == 1:
        value = value.item()
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _fingerprint(*tensors: Any) -> str:
    """Eight hex digits of a SHA-256 over the batches' bytes: the same probe, the same name."""
    digest = hashlib.sha256()
    for item in tensors:
        parts = [item[k] for k in sorted(item)] if isinstance(item, Mapping) else [item]
        for t in parts:
            digest.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:8]


def _as_dataset(inputs: Any, targets: Tensor, name: str) -> Dataset:
    task = "regression" if targets.is_floating_point() else "classification"
    return Dataset(inputs, targets, name=name, task=task)


def _on_device(data: Dataset, device: torch.device) -> Dataset:
    return data if primary_inputs(data.x).device == device else data.to(device)


class SharpnessTracker:
    """Measure sharpness on a fixed probe batch every ``every`` steps of your training loop.

    Args:
        model: the model being trained (``model(inputs)``, or ``model(**inputs)`` for dict inputs).
        probe: the fixed batch: ``(inputs, targets)`` or a dict with ``labels`` (Hugging Face
            style); :func:`~landscape.integrations.choose_probe` draws one from a data set.
        loss: any loss of :func:`landscape.losses.as_loss` (a name, a ``torch.nn`` loss, a
            callable); default ``"model"`` for a dict with labels, else ``"cross_entropy"``.
        every: measure at the steps divisible by ``every`` (0: never during training).
        out: the run folder to write (``None``: none; values go to ``loggers`` and are returned).
        metrics: training diagnostics to measure (default: every metric of the registry that
            declares one; :func:`landscape.metrics.diagnostic_metrics`).
        seed: the seed of the estimators' random probes (the same seed, the same numbers).
        eval_batch: a held-out batch (same forms as ``probe``): ``eval_loss``/``eval_accuracy`` at
            each measurement, ``summary.json``'s and the report's eval numbers and pruning curves.
        log_every: also write a record (``train_loss``, ``lr``) at the steps divisible by it.
        optimizer: the run's optimizer: its rule, learning rate and rho go into ``config.json``
            and its learning rate into every record.
        model_spec, model_kwargs: how a report rebuilds the model (an import path
            ``package.module:factory`` and its keyword arguments); default:
            :func:`landscape.integrations.rebuild.model_spec`.
        final_metrics: the final analysis at :meth:`finish` (``analysis.json``); ``None``: none.
        final_options: options of that analysis (:func:`landscape.analyze`'s budgets, such as
            ``{"max_iter": 100, "trace_samples": 48}``; default: analyze's).
        max_iter, trace_samples: replace the diagnostic budgets' Lanczos steps and trace products.
        config: entries for ``config.json`` that replace what the tracker knows (``name``,
            ``group``, ``seed``, ``data`` (a data spec for the report instead of the probe),
            ``loss`` (an import path, for a loss object), anything else).
        loggers: ``logger(values, step)`` callables that receive every measurement.
        resume: continue the run in ``out`` (its records after the first new step are dropped).

    Call :meth:`step` after every update with the number of updates done and the batch loss, and
    :meth:`finish` at the end (or use the tracker as a context manager).
    """

    def __init__(
        self,
        model: nn.Module,
        probe: Any,
        loss: LossLike | None = None,
        *,
        every: int = 50,
        out: str | Path | None = None,
        metrics: str | Sequence[str] | None = None,
        seed: int = 0,
        eval_batch: Any = None,
        log_every: int | None = None,
        optimizer: Any = None,
        model_spec: str | None = None,
        model_kwargs: Mapping[str, Any] | None = None,
        final_metrics: str | Sequence[str] | None = FINAL_METRICS,
        final_options: Mapping[str, Any] | None = None,
        max_iter: int | None = None,
        trace_samples: int | None = None,
        config: Mapping[str, Any] | None = None,
        loggers: Sequence[Logger] = (),
        resume: bool = False,
    ) -> None:
        for what, value in (("every", every), ("log_every", log_every or 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise UserError(f"{what} must be a non-negative integer, got {value!r}")
        if not isinstance(model, nn.Module):
            raise UserError(f"the model must be a torch.nn.Module, got {type(model).__name__}")
        inputs, targets, from_labels = split_batch(probe)
        self.model = model
        self.loss: LossLike = loss if loss is not None else ("model" if from_labels else "cross_entropy")
        self.every = every
        self.log_every = log_every or 0
        self.seed = int(seed)
        self.chosen = tuple(m.name for m in check_diagnostic_metrics(metrics))
        self.final_metrics = final_metrics
        self.final_options = dict(final_options or {})
        self.budget = {"max_iter": max_iter, "trace_samples": trace_samples}
        self.loggers = list(loggers)
        self.optimizer = optimizer
        self.probe = _as_dataset(inputs, targets, "probe")
        self.eval_data = _as_dataset(*split_batch(eval_batch)[:2], "eval") if eval_batch is not None else None
        self.folder = RunFolder(out, resume=resume) if out is not None else None
        self.config = self._config(model_spec, model_kwargs, config)
        self._losses: list[float] = []
        self._last_loss: float | None = None
        self._last_step: int | None = None
        self._measured: int | None = None
        self._started = time.perf_counter()
        self._finished = False
        if self.folder is not None:
            self._start_folder()

    # ------------------------------------------------------------------------ config.json
    def _config(
        self, spec: str | None, spec_kwargs: Mapping[str, Any] | None, given: Mapping[str, Any] | None
    ) -> dict[str, Any]:
        given = dict(given or {})
        if spec is None:
            spec, found = model_spec(self.model)
            spec_kwargs = found if spec_kwargs is None else spec_kwargs
        probe = self.probe
        config: dict[str, Any] = {
            "name": Path(self.folder.path).name if self.folder is not None else None,
            "method": None,
            "base": None,
            "lr": None,
            "weight_decay": None,
            "rho": None,
            **describe_optimizer(self.optimizer),
            "seed": self.seed,
            "steps": None,
            "model": spec,
            "model_kwargs": dict(spec_kwargs or {}),
            "model_class": class_path(self.model),
            "data": None,
            "eval_data": None,
            "loss": self.loss if isinstance(self.loss, str) else None,
            "task": None,
            "log_every": self.log_every or self.every,
            "diagnose_every": self.every,
            "diagnose_samples": len(probe),
            "diagnose_metrics": list(self.chosen),
            "final_metrics": _names(self.final_metrics),
            "source": "SharpnessTracker",
        }
        config |= given
        if config.get("group") is None:
            data = given.get("data") or f"probe {_fingerprint(probe.x, probe.y)}"
            config["group"] = f"{type(self.model).__name__} on {data}"
        config |= {"version": runs.CONFIG_VERSION, "provenance": provenance()}
        if self.folder is not None:
            self._warn_unrebuildable(config)
        return config

    def _warn_unrebuildable(self, config: dict[str, Any]) -> None:
        if not config.get("model"):
            warnings.warn(
                f"landscape report cannot rebuild {class_path(self.model)} from the run folder: pass "
                "model_spec='package.module:factory' (and model_kwargs=) to the tracker",
                UserWarning,
                stacklevel=4,
            )
        if not config.get("loss"):
            warnings.warn(
                "landscape report cannot name the loss object of this run: pass config={'loss': "
                "'package.module:loss'} to the tracker, or the report measures with cross-entropy",
                UserWarning,
                stacklevel=4,
            )

    def _start_folder(self) -> None:
        """Hold the folder, write the probe (and held-out) batch as data files the report loads, and
        ``config.json``."""
        assert self.folder is not None
        folder, config = self.folder, self.config
        folder.open(config)
        try:
            if config.get("data") is None:
                path = folder.write_data(PROBE_FILE, self.probe.x, self.probe.y)
                config["data"] = str(path)
                config["task"] = (
                    load_data(str(path)).task if folder.writes else None
                )  # as the report reads it
            if self.eval_data is not None and config.get("eval_data") is None:
                config["eval_data"] = str(folder.write_data(EVAL_FILE, self.eval_data.x, self.eval_data.y))
            folder.rewrite_config(config)
        except BaseException:
            folder.close()
            raise

    # ------------------------------------------------------------------------ measuring
    def step(self, step: int, loss: float | Tensor | None = None) -> dict[str, Any] | None:
        """Note the batch ``loss`` of update ``step`` (the number of updates done so far) and
        measure when ``step`` is divisible by ``every`` (once per step). Returns the measured
        values, or ``None`` when nothing was measured."""
        if loss is not None:
            self._losses.append(float(loss.detach()) if isinstance(loss, Tensor) else float(loss))
        self._last_step = int(step)
        if self.every and step % self.every == 0 and step != self._measured:
            return self.measure(step)
        if self.log_every and step % self.log_every == 0 and self._losses:
            self._record(step, {})
        return None

    def measure(self, step: int | None = None) -> dict[str, Any]:
        """Measure now (the record of ``step``, default the last step noted) and return the values."""
        step = self._last_step if step is None else int(step)
        if step is None:
            step = 0
        device = next((p.device for p in self.model.parameters()), torch.device("cpu"))
        grads = [(p, p.grad) for p in self.model.parameters()]
        with torch.enable_grad():
            values = diagnose(
                self.model,
                _on_device(self.probe, device),
                _on_device(self.eval_data, device) if self.eval_data is not None else None,
                self.loss,
                **self.budget,
                seed=self.seed,
                chosen=self.chosen,
            )
        for p, grad in grads:  # the estimators make no .grad; a loss that does is undone here
            p.grad = grad
        self._measured = step
        self._last_step = step if self._last_step is None else max(self._last_step, step)
        self._record(step, values)
        shown = {k: float(v) for k, v in values.items() if _number(v) is not None and math.isfinite(float(v))}
        for logger in self.loggers:
            logger(shown, step)
        return values

    def log(self, step: int, **values: Any) -> None:
        """Add values to the record of ``step`` (``train_loss=``, ``lr=``: what the framework logged)."""
        if values.get("train_loss") is not None:
            self._last_loss = float(values["train_loss"])
        if self.folder is not None:
            self.folder.record(step, {k: v for k, v in values.items() if v is not None})

    def _record(self, step: int, values: Mapping[str, Any]) -> None:
        extra: dict[str, Any] = {}
        inner = unwrap_optimizer(self.optimizer)
        if inner is not None and inner.param_groups:
            extra["lr"] = _number(inner.param_groups[0].get("lr"))
            rule = getattr(inner, "rule", None)
            if rule is not None and hasattr(rule, "current_rho"):
                extra["rho"] = rule.current_rho()
        if self._losses:
            extra["train_loss"] = sum(self._losses) / len(self._losses)
            self._last_loss = extra["train_loss"]
            self._losses = []
        if self.folder is not None:
            self.folder.record(step, {**extra, **values, "time_s": time.perf_counter() - self._started})

    # ------------------------------------------------------------------------ the end
    def finish(self, step: int | None = None) -> dict[str, Any] | None:
        """End the run: the last record, and with ``out`` ``final.pt``, the final analysis
        (``analysis.json``, ``final_metrics`` on the probe batch with analyze's default budgets),
        the held-out evaluation and ``summary.json``; returns the summary (``None`` without
        ``out``). Leaves the model as :meth:`measure` does."""
        if self._finished:
            return None
        self._finished = True
        step = self._last_step if step is None else int(step)
        step = 0 if step is None else step
        if self.folder is None:
            return None
        try:
            if self._losses:
                self._record(step, {})
            self.folder.flush()
            summary = self._final(step)
            self.folder.finish(self.model, self.config, summary)
            return summary
        finally:
            self.folder.close()

    def _final(self, step: int) -> dict[str, Any]:
        """The final analysis and evaluation of the model -> ``summary.json``'s contents."""
        from landscape.analysis import analyze

        assert self.folder is not None
        self.config["steps"] = step
        folder, names = self.folder, _names(self.final_metrics)
        device = next((p.device for p in self.model.parameters()), torch.device("cpu"))
        curvature: dict[str, Any] = {}
        files = [
            folder.path / runs.CONFIG_FILE,
            folder.path / runs.METRICS_FILE,
            folder.path / runs.FINAL_FILE,
        ]
        with preserved(self.model), torch.enable_grad():
            if names:
                result = analyze(
                    self.model,
                    _on_device(self.probe, device),
                    self.loss,
                    names,
                    **self.final_options,
                    seed=self.seed,
                )
                context = {
                    "model": self.config.get("model"),
                    "data": self.config.get("data"),
                    "checkpoint": str(folder.path / runs.FINAL_FILE),
                    "loss": self.config.get("loss"),
                    "torch": torch.__version__,
                    "threads": torch.get_num_threads(),
                    "note": "the probe batch of the run",
                    "seed": self.seed,
                    "run": self.config.get("name"),
                    "step": step,
                    "samples": len(self.probe),
                } | provenance()
                if folder.writes:
                    files += runs.write_analysis(result, folder.path, context)
                curvature = result.to_dict()
            evaluation = (
                evaluate(self.model, _on_device(self.eval_data, device), self.loss)
                if self.eval_data is not None
                else None
            )
        from landscape import metrics

        summary = RunSummary(
            name=str(self.config.get("name") or folder.path.name),
            run_dir=str(folder.path),
            method=str(self.config.get("method") or "?"),
            rho=self.config.get("rho"),
            steps=step,
            completed=True,
            train_loss=self._last_loss,
            eval_loss=evaluation.loss if evaluation is not None else None,
            eval_accuracy=evaluation.accuracy if evaluation is not None else None,
            weight_norm=weight_norm(self.model),
            curvature={h.key: curvature.get(h.key) for h in metrics.headlines()},
            train_seconds=time.perf_counter() - self._started,
            files=[str(p) for p in [*files, folder.path / runs.SUMMARY_FILE]],
        )
        return runs.jsonable(summary.to_dict())

    def close(self) -> None:
        """Write what is pending and let the run folder go, without ending the run (no
        ``final.pt``: after an error, say)."""
        self._finished = True
        if self.folder is not None:
            self.folder.close()

    def __enter__(self) -> SharpnessTracker:
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: Any) -> None:
        if kind is None:
            self.finish()
        else:
            self.close()


def _names(selection: str | Sequence[str] | None) -> str | None:
    """A metric selection as the comma list ``config.json`` stores (``None``: none)."""
    if not selection:
        return None
    return selection if isinstance(selection, str) else ",".join(selection)
