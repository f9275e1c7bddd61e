"""The training loop's safe points: between jitted calls, where the state is whole, a run saves its
checkpoint, looks at the signals it has deferred, calls the user's callbacks, and may stop.

A signal only records itself (:class:`~emnist_jax.cnn.interrupts.DeferredSignals`); the loop asks
:meth:`Run.stop_requested` at each safe point. One process answers from its own signals at every
safe point; the processes of a multi-process run agree (a collective) only where the loop syncs
anyway, so that they all stop at the same position.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import numpy as np

from emnist_jax.cnn.checkpoints import Checkpoints
from emnist_jax.cnn.interrupts import DeferredSignals, TrainingInterrupted, _Forced
from emnist_jax.cnn.results import EpochMetrics, Position
from emnist_jax.cnn.steps import TrainState

START = Position(1, 0)


def any_process(flag: bool) -> bool:
    """True on every process when ``flag`` is true on any (a collective: all processes call it)."""
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils

    return bool(np.asarray(multihost_utils.process_allgather(np.int32(flag))).any())


class Run:
    """A training run between safe points: its state and metric sums, the position they stand at,
    the epochs done, and the newest position saved (None: nothing saved; no checkpoints without a
    workdir). ``resumed_from`` is where it started when it continued a checkpoint."""

    def __init__(self, state: TrainState, sums: dict, history: list[EpochMetrics], resumed_from: Position | None,
                 checkpoints: Checkpoints | None, steps: int, signals: DeferredSignals):
        self.state, self.sums, self.history = state, sums, history
        self.position = resumed_from or START
        self.resumed_from = self.saved = resumed_from
        self.checkpoints, self.steps, self.signals = checkpoints, steps, signals
        self.single = jax.process_count() == 1

    def save(self) -> None:
        """Checkpoint the current position (none before the first step); no signal interrupts the write."""
        at = self.position
        if self.checkpoints is not None and at != START:
            with self.signals.critical():
                self.checkpoints.save((at.epoch - 1) * self.steps + at.step, self.state, self.sums, {
                    "epoch": at.epoch, "step": at.step, "history": [dataclasses.asdict(h) for h in self.history]})
            self.saved = at

    def signalled(self) -> bool:
        return self.signals.received is not None

    def stop_requested(self, synced: bool = True) -> bool:
        """Whether a signal stops the run here; ``synced``: the processes meet here (a collective)."""
        return self.signalled() if self.single else synced and any_process(self.signalled())

    def interrupted(self, at: Position | None, during: str = "training") -> TrainingInterrupted:
        """The exception that stops the run at ``at`` (None: the run had not started)."""
        at = at or START
        folder = str(self.checkpoints.folder) if self.checkpoints is not None and self.saved == at else None
        return TrainingInterrupted(at.epoch, at.step, folder, self.signals.name, during)

    def stop(self) -> TrainingInterrupted:
        """Stop at the current position, a safe point, saving it first."""
        jax.block_until_ready(self.state)
        self.save()
        return self.interrupted(self.position)

    def call(self, function: Callable[[Any], None] | None, argument: Any) -> None:
        """Call a user callback at a safe point; its KeyboardInterrupt stops the run like a signal."""
        if function is None:
            return
        try:
            function(argument)
        except _Forced:
            raise
        except KeyboardInterrupt:
            raise self.stop() from None

    def check_evaluation(self, at_end: bool = False) -> None:
        """Stop on a signal during evaluation, at the newest checkpoint: one process between any two
        batches; several processes together once, ``at_end`` (a collective)."""
        stop = (not at_end and self.signalled()) if self.single else (at_end and any_process(self.signalled()))
        if stop:
            raise self.interrupted(self.saved, during="evaluation")
