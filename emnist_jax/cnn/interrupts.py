"""Ctrl-C, SIGTERM and SIGHUP during training: stop at the next safe point, never inside a step or a save.

A ``KeyboardInterrupt`` raised wherever Python happens to be can land while a jitted call has
already consumed (donated) the old state but not yet returned the new one, or in the middle of
writing a checkpoint; the first leaves nothing valid to save, the second a half-written folder.
So inside :class:`DeferredSignals` a signal only records itself, and the training loop looks at
it between calls, where the state is whole.
"""

from __future__ import annotations

import contextlib
import signal
import threading

from emnist_jax.runtime import SIGNALS


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped by SIGINT/SIGTERM/SIGHUP (or a ``KeyboardInterrupt`` from a callback).

    ``epoch`` (1-based) and ``step`` (steps done in that epoch) are the position a resume starts
    from; ``checkpoint`` is the folder that holds it, or None when nothing is saved (no workdir,
    or no step done yet). ``during`` is "training" or "evaluation".
    """

    def __init__(self, epoch: int, step: int, checkpoint: str | None, signal_name: str = "SIGINT",
                 during: str = "training"):
        super().__init__(f"interrupted ({signal_name}) during {during} at epoch {epoch}, step {step}")
        self.epoch, self.step, self.checkpoint = epoch, step, checkpoint
        self.signal_name, self.during = signal_name, during


class _Forced(KeyboardInterrupt):
    """A second signal, raised wherever Python was: the state may be half-updated, save nothing."""


class DeferredSignals:
    """Inside ``with``, SIGINT, SIGTERM and SIGHUP set :attr:`received` instead of raising.

    A second signal raises ``KeyboardInterrupt`` at once (the user insists), except inside
    :meth:`critical`, where every signal waits until the block ends. Off the main thread Python
    cannot install handlers: there this does nothing and interrupts arrive as usual.
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self._critical = 0
        self._previous: dict = {}

    def __enter__(self) -> "DeferredSignals":
        if threading.current_thread() is threading.main_thread():
            for signum in SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum: int, frame) -> None:
        if self.received is not None and not self._critical:
            raise _Forced
        if self.received is None:
            self.received = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.received).name if self.received else "KeyboardInterrupt"

    @contextlib.contextmanager
    def critical(self):
        """A block that no signal interrupts (a checkpoint save)."""
        self._critical += 1
        try:
            yield
        finally:
            self._critical -= 1

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            if handler is not None:  # None: a handler installed outside Python, which we cannot restore
                signal.signal(signum, handler)
        self._previous.clear()
