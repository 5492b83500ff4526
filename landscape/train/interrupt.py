"""Ctrl-C during training: deferred to the end of the current step, then a checkpoint and a stop.

While a step runs, SIGINT only sets a flag (:class:`StopRequest`); the loop writes a checkpoint
after the step and raises :class:`TrainingInterrupted`. A second Ctrl-C interrupts at once (the
last periodic checkpoint stays valid).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

__all__ = ["StopRequest", "TrainingInterrupted"]


class TrainingInterrupted(KeyboardInterrupt):
    """Raised after Ctrl-C once a checkpoint at ``step`` is on disk; ``resume_dir`` continues it."""

    def __init__(self, resume_dir: Path, step: int, checkpoint: Path | None) -> None:
        super().__init__(f"interrupted at step {step}")
        self.resume_dir = Path(resume_dir)
        self.step = step
        self.checkpoint = checkpoint


class StopRequest:
    """SIGINT handling: while ``deferring``, Ctrl-C only sets ``requested``; otherwise (or the
    second time) it raises ``KeyboardInterrupt`` as usual. Installed in the main thread only."""

    def __init__(self) -> None:
        self.requested = False
        self.deferring = False
        self._previous: Any = None
        self._installed = False

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.deferring and not self.requested:
            self.requested = True
            return
        raise KeyboardInterrupt

    @contextmanager
    def deferred(self) -> Iterator[None]:
        """A block (one training step) during which Ctrl-C only sets ``requested``."""
        self.deferring = True
        try:
            yield
        finally:
            self.deferring = False
