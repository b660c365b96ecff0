"""Preemption: stop at a step every process agrees on, after checkpointing it.

One process: SIGTERM is recorded by a Python handler (nothing else is safe in
a signal handler) and the loop polls `PreemptionWatcher.reached(step)` between
chunks of steps. Several processes (`jax.distributed` initialized): JAX's
preemption sync manager catches SIGTERM on any process and the coordination
service picks one step at which every process's `reached(step)` (Orbax's
`reached_preemption`) turns True, so all processes save that same step and
stop together; no process is left waiting in a collective. The trainer then
raises `Preempted` and `experiments/train.py` exits with `PREEMPTED_EXIT_CODE`.
"""

from __future__ import annotations

import signal
import threading

from absl import logging
import jax
from orbax.checkpoint import utils as ocp_utils

# Exit status of `experiments/train.py` after a preemption: EX_TEMPFAIL of
# sysexits.h ("temporary failure, retry"), so a job wrapper can tell "rerun
# me" (75) from "done" (0) and from a crash (1).
PREEMPTED_EXIT_CODE = 75
PREEMPTION_SIGNALS = (signal.SIGTERM,)


class Preempted(Exception):
  """Training stopped on a preemption signal after checkpointing its step.

  Attributes:
    step: the step that was checkpointed (the rerun resumes from it).
    signal_name: e.g. 'SIGTERM'.
    workdir: the work directory to rerun with.
  """

  def __init__(self, step: int, signal_name: str, workdir: str):
    super().__init__(f"preempted by {signal_name} at step {step}; checkpoint {step} "
                     f"saved in {workdir}; rerun with the same workdir to resume")
    self.step = step
    self.signal_name = signal_name
    self.workdir = workdir


class PreemptionWatcher:
  """Context manager: `reached(step)` says whether to checkpoint and stop now.

  With one process it records `PREEMPTION_SIGNALS` while active and restores
  the old handlers after (signal handlers can only be set from the main
  thread: elsewhere SIGTERM keeps its default action). With several processes
  it leaves SIGTERM to JAX's preemption sync manager and asks Orbax's
  `reached_preemption(step)`, which every process must call with the same
  steps.
  """

  def __init__(self, multiprocess: bool | None = None):
    self.multiprocess = jax.process_count() > 1 if multiprocess is None else multiprocess
    self.signal_name: str | None = None
    self._previous = {}
    self._calls = 0

  def _record(self, signum, frame):
    del frame
    if self.signal_name is None:
      self.signal_name = signal.Signals(signum).name

  def reached(self, step: int) -> bool:
    """Whether to checkpoint `step` and stop (called at every chunk boundary)."""
    del step  # every process checks at the same boundaries: count the calls
    if self.multiprocess:
      # JAX's sync point is the largest counter any process reported + 1, so
      # the counter must advance by 1 per call (steps advance by chunks).
      self._calls += 1
      if ocp_utils.reached_preemption(self._calls):
        self.signal_name = self.signal_name or "SIGTERM"
        return True
      return False
    return self.signal_name is not None

  def __enter__(self):
    if self.multiprocess:
      return self
    if threading.current_thread() is threading.main_thread():
      for signum in PREEMPTION_SIGNALS:
        self._previous[signum] = signal.signal(signum, self._record)
    else:
      logging.info("Not in the main thread: SIGTERM will not checkpoint before exiting")
    return self

  def __exit__(self, *exc_info):
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous = {}
