"""A run folder written from a user's training loop, in the layout ``landscape report`` reads.

``config.json`` (what is known of the run) when tracking starts, one ``metrics.jsonl`` record per
logged step as training goes, and at the end ``final.pt`` (the weights with the config that
rebuilds the model and names the data), ``analysis.json`` (the final analysis) and
``summary.json``: the files of a ``landscape train`` run folder but the step checkpoints, through
the writers of :mod:`landscape.runs`. The folder is held by this process while the run lasts
(:func:`landscape.runs.locked_output_dir`); only the leading process of a data-parallel run writes.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

from torch import nn

from landscape import distributed, runs
from landscape.errors import UserError

__all__ = ["PROBE_FILE", "EVAL_FILE", "RunFolder"]

PROBE_FILE = "probe.pt"
"""The probe batch, ``{"x": inputs, "y": targets}``: the data a report measures the final weights on."""
EVAL_FILE = "eval.pt"
"""The held-out batch (when one is given): the data of the report's pruning curves."""


class RunFolder:
    """One run folder, held from :meth:`open` to :meth:`close`.

    :meth:`record` merges values into the record of a step; a record is written when a later step
    arrives (so values of one step that arrive from several places make one line), at
    :meth:`flush` and at :meth:`close`.
    """

    def __init__(self, path: str | Path, *, resume: bool = False) -> None:
        self.path = Path(path)
        self.resume = resume
        self.writes = distributed.rank() == 0
        self._hold = contextlib.ExitStack()
        self._log: TextIO | None = None
        self._pending: dict[str, Any] | None = None
        self._truncated = not resume

    def open(self, config: Mapping[str, Any]) -> None:
        """Hold the folder, check it and write ``config.json`` (and an empty ``metrics.jsonl``
        unless resuming). A folder that holds a run already is a one-line ``UserError`` unless
        ``resume``; resuming keeps its records up to the first new step and drops its summary."""
        folder = self._hold.enter_context(runs.locked_output_dir(self.path))
        try:
            if not self.writes:
                return
            if runs.holds_run(folder) and not self.resume:
                raise UserError(
                    f"{folder} already holds a run: choose another out= folder, or pass resume=True to continue it"
                )
            if self.resume and (folder / runs.METRICS_FILE).is_file():
                runs.write_text_atomic(folder / runs.CONFIG_FILE, runs.dumps_json(dict(config)))
                (folder / runs.SUMMARY_FILE).unlink(missing_ok=True)
            else:
                runs.start_run(folder, config)
                self._truncated = True
        except BaseException:
            self._hold.close()
            raise

    def write_data(self, name: str, inputs: Any, targets: Any) -> Path:
        """Save a batch as a data file of the folder (``{"x": inputs, "y": targets}``, on the CPU),
        which ``landscape.data.load_data`` reads; returns its absolute path."""
        import torch

        path = (self.path / name).resolve()
        if self.writes:
            cpu = {k: v.detach().cpu() for k, v in inputs.items()} if isinstance(inputs, Mapping) else inputs
            payload = {
                "x": cpu.detach().cpu() if isinstance(cpu, torch.Tensor) else cpu,
                "y": targets.detach().cpu(),
            }
            runs.write_atomic(path, lambda tmp: torch.save(payload, tmp))
        return path

    def rewrite_config(self, config: Mapping[str, Any]) -> None:
        """Replace ``config.json`` (the end of a run knows its number of steps)."""
        if self.writes:
            runs.write_text_atomic(self.path / runs.CONFIG_FILE, runs.dumps_json(dict(config)))

    def record(self, step: int, values: Mapping[str, Any]) -> None:
        """Merge ``values`` into the record of ``step`` (writing the record of an earlier step first)."""
        if self._pending is not None and self._pending["step"] != step:
            self.flush()
        if self._pending is None:
            self._pending = {"step": int(step)}
        self._pending.update(values)

    def flush(self) -> None:
        """Write the pending record."""
        record, self._pending = self._pending, None
        if record is None or not self.writes:
            return
        if not self._truncated:  # resuming: the records from this step on are the new run's
            runs.truncate_metrics(self.path, record["step"] - 1)
            self._truncated = True
        if self._log is None:
            self._log = runs.open_metrics(self.path)
        runs.append_record(self._log, record)

    def finish(self, model: nn.Module, config: Mapping[str, Any], summary: Mapping[str, Any]) -> None:
        """``final.pt`` (the model's weights with ``config``) and ``summary.json``, after the last record."""
        self.flush()
        self.rewrite_config(config)
        if self.writes:  # the config as config.json holds it: plain JSON values, weights-only loadable
            runs.save_final(self.path, model, json.loads(runs.dumps_json(dict(config))))
            runs.write_summary(self.path, summary)

    def close(self) -> None:
        """Write the pending record and let the folder go."""
        try:
            self.flush()
        finally:
            if self._log is not None:
                self._log.close()
                self._log = None
            self._hold.close()
