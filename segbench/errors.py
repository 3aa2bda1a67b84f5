"""Failures that the runner records as a row status rather than as an error."""

from __future__ import annotations


class TrainingDiverged(RuntimeError):
    """Training met a non-finite loss or gradient norm; the row is recorded as `diverged`."""

    def __init__(self, epoch: int, step: int, what: str):
        super().__init__(f"non-finite {what} at epoch {epoch}, step {step}")
        self.epoch, self.step, self.what = epoch, step, what
