"""Where training metrics go: `metrics.jsonl`, TensorBoard, detailed logs.

`MetricsWriter(workdir)` writes every scalar it is given to

  * absl logging at verbosity 1 (`--verbosity=1`; the default console shows
    the short lines of `training.console`),
  * `workdir/metrics.jsonl`, one JSON object per call: {"step": s, name: value,
    ...}; appended, so a resumed run continues the same file. A resumed run
    first drops the records after the step it resumes from (`drop_after`), so
    steps re-run after a kill appear once,
  * TensorBoard event files in `workdir/tensorboard` via tensorboardX (no
    TensorFlow needed): `tensorboard --logdir workdir/tensorboard`.

Only process 0 writes (`enabled=jax.process_index() == 0`), so a multi-host
run has one copy.
"""

from __future__ import annotations

import json
import math
import os
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


def record(step: int, scalars: Mapping) -> dict:
  """One `metrics.jsonl` record: {"step": step, name: value}; NaN / inf as strings."""
  out = {"step": int(step)}
  out.update({k: (v if math.isfinite(v) else str(v))
              for k, v in flatten_scalars(scalars).items()})
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
    logging.vlog(1, "step %d: %s", step, ", ".join(
        f"{k}={v:.4g}" for k, v in sorted(scalars.items())))
    with open(self.jsonl_path, "a") as f:
      f.write(json.dumps(record(step, scalars)) + "\n")
    if self._summary_writer is not None:
      for name, value in scalars.items():
        self._summary_writer.add_scalar(name, value, global_step=int(step))

  def drop_after(self, step: int) -> None:
    """Removes the `metrics.jsonl` records of steps after `step` (atomically).

    A run killed after its last checkpoint logged steps that the resumed run
    computes again; without this they would be listed twice.
    """
    if not self.enabled or not os.path.exists(self.jsonl_path):
      return
    with open(self.jsonl_path) as f:
      lines = f.readlines()
    kept = []
    for line in lines:
      try:
        record = json.loads(line)
      except json.JSONDecodeError:
        continue  # the line a kill cut short
      if record.get("step", 0) <= step:
        kept.append(line if line.endswith("\n") else line + "\n")
    if len(kept) != len(lines):
      tmp = self.jsonl_path + ".tmp"
      with open(tmp, "w") as f:
        f.writelines(kept)
      os.replace(tmp, self.jsonl_path)

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
