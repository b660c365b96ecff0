"""Where training metrics go: absl logging, `metrics.jsonl`, TensorBoard, a TTY bar.

`MetricsWriter(workdir)` writes every scalar it is given to

  * absl logging (one INFO line per call),
  * `workdir/metrics.jsonl`, one JSON object per call: {"step": s, name: value,
    ...}; appended, so a resumed run continues the same file (a step logged
    before a crash and again after the restart appears twice: keep the last),
  * TensorBoard event files in `workdir/tensorboard` via tensorboardX (no
    TensorFlow needed): `tensorboard --logdir workdir/tensorboard`.

Only process 0 writes (`enabled=jax.process_index() == 0`), so a multi-host
run has one copy.

`ProgressBar` prints `step / total, steps/s, ETA` on one line, only when stdout
is a terminal (never into log files or CI output).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Mapping

from absl import logging
import numpy as np


def flatten_scalars(metrics: Mapping, prefix: str = "") -> dict[str, float]:
  """Nested dict of numbers -> flat {'a/b': float}; non-numeric leaves dropped."""
  out = {}
  for key, value in metrics.items():
    name = f"{prefix}{key}"
    if isinstance(value, Mapping):
      out.update(flatten_scalars(value, name + "/"))
    elif isinstance(value, (bool, np.bool_)):
      out[name] = float(value)
    elif isinstance(value, (int, float, np.number)) or (
        isinstance(value, np.ndarray) and value.size == 1):
      out[name] = float(value)
  return out


class MetricsWriter:
  """Writes scalars to absl logging, `metrics.jsonl` and TensorBoard."""

  def __init__(self, workdir: str, *, enabled: bool = True,
               tensorboard: bool = True):
    self.enabled = enabled
    self.jsonl_path = os.path.join(workdir, "metrics.jsonl")
    self.tensorboard_dir = os.path.join(workdir, "tensorboard")
    self._summary_writer = None
    if enabled:
      os.makedirs(workdir, exist_ok=True)
      if tensorboard:
        # Imported here so that the library does not need tensorboardX unless
        # it writes event files.
        from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
        self._summary_writer = SummaryWriter(logdir=self.tensorboard_dir,
                                             flush_secs=30)

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    """Writes one record of scalars for `step` (nested dicts are flattened)."""
    if not self.enabled:
      return
    scalars = flatten_scalars(scalars)
    logging.info("step %d: %s", step, ", ".join(
        f"{k}={v:.4g}" for k, v in sorted(scalars.items())))
    record = {"step": int(step)}
    record.update({k: (v if math.isfinite(v) else str(v)) for k, v in scalars.items()})
    with open(self.jsonl_path, "a") as f:
      f.write(json.dumps(record) + "\n")
    if self._summary_writer is not None:
      for name, value in scalars.items():
        self._summary_writer.add_scalar(name, value, global_step=int(step))

  def write_text(self, step: int, name: str, text: str) -> None:
    if self.enabled and self._summary_writer is not None:
      self._summary_writer.add_text(name, text, global_step=int(step))

  def flush(self) -> None:
    if self._summary_writer is not None:
      self._summary_writer.flush()

  def close(self) -> None:
    if self._summary_writer is not None:
      self._summary_writer.close()
      self._summary_writer = None


def read_metrics(workdir: str) -> list[dict]:
  """The records of `workdir/metrics.jsonl` (for tests and notebooks)."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def _format_seconds(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "?"
  seconds = int(round(seconds))
  hours, rest = divmod(seconds, 3600)
  minutes, seconds = divmod(rest, 60)
  return f"{hours}h{minutes:02d}m{seconds:02d}s" if hours else f"{minutes}m{seconds:02d}s"


class ProgressBar:
  """A one-line `step/total [####....] steps/s ETA` bar, only on a TTY."""

  def __init__(self, total: int, initial: int = 0, *, stream=None,
               width: int = 30, enabled: bool | None = None,
               min_interval_s: float = 0.2):
    self.total = max(int(total), 1)
    self.stream = stream if stream is not None else sys.stdout
    if enabled is None:
      enabled = hasattr(self.stream, "isatty") and self.stream.isatty()
    self.enabled = enabled
    self.width = width
    self.min_interval_s = min_interval_s
    self._start_step = initial
    self._start_time = time.perf_counter()
    self._last_draw = 0.0

  def update(self, step: int, suffix: str = "") -> None:
    if not self.enabled:
      return
    now = time.perf_counter()
    if now - self._last_draw < self.min_interval_s and step < self.total:
      return
    self._last_draw = now
    elapsed = now - self._start_time
    done = step - self._start_step
    rate = done / elapsed if elapsed > 0 and done > 0 else float("nan")
    eta = (self.total - step) / rate if rate == rate and rate > 0 else float("nan")
    filled = int(self.width * min(step, self.total) / self.total)
    bar = "#" * filled + "." * (self.width - filled)
    line = (f"\r{step}/{self.total} [{bar}] "
            f"{rate:.1f} steps/s ETA {_format_seconds(eta)} {suffix}")
    self.stream.write(line[:200])
    self.stream.flush()

  def close(self) -> None:
    if self.enabled:
      self.stream.write("\n")
      self.stream.flush()
