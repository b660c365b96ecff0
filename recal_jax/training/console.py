"""What a run prints: quiet by default, a tqdm bar, full detail in the files.

At absl verbosity 0 (the default) the console shows a few lines per run:
third-party INFO records (Orbax writes one per checkpoint file, JAX reports
"Unable to initialize backend 'tpu'") are dropped and metric lines are short
(`short_line`, < 200 characters). `--verbosity=1` shows everything;
`show_third_party_logs()` (`experiments.train --verbose_checkpointing`) shows
the third-party INFO lines only. Every
scalar always goes to `metrics.jsonl` and TensorBoard (`metrics_writer`).

`progress_bar` is a tqdm bar on stderr (only on a terminal) whose ETA
excludes compilation (`ProgressBar.start_timing` after the first chunk);
while it is open, absl log lines are written through `tqdm.write` so they do
not break the bar.
"""

from __future__ import annotations

import contextlib
import logging as std_logging
import sys
from typing import Mapping

from absl import logging
import tqdm

_QUIET_SOURCES = ("/orbax/", "/jax/_src/xla_bridge", "/jax/_src/distributed")


class _HideThirdPartyInfo(std_logging.Filter):
  """Drops INFO records of Orbax and JAX's backend discovery (and one Orbax warning)."""

  def __init__(self):
    super().__init__()
    self.hiding = True

  def filter(self, record: std_logging.LogRecord) -> bool:
    if not self.hiding or logging.get_verbosity() >= 1 or not any(s in record.pathname for s in _QUIET_SOURCES):
      return True
    # Orbax warns on every save without metrics when checkpoints are ranked.
    return record.levelno >= std_logging.WARNING and "tracked_metric" not in record.getMessage()


_FILTER = _HideThirdPartyInfo()


def quiet_third_party_logs() -> None:
  """Installs the filter on absl's handler and the root logger (idempotent)."""
  for target in (logging.get_absl_handler(), std_logging.getLogger()):
    if _FILTER not in target.filters:
      target.addFilter(_FILTER)


def show_third_party_logs() -> None:
  """Lets Orbax / JAX INFO lines through from now on, in this process.

  Later `quiet_third_party_logs()` calls (every training run makes one) keep
  the filter installed but passing everything.
  """
  _FILTER.hiding = False


SHORT_KEYS = (("rollout/reward", "reward"), ("rollout/accuracy", "acc"),
              ("rollout/cost_usd", "cost"), ("loss/loss", "loss"), ("grad_norm", "|g|"),
              ("steps_per_second", "steps/s"), ("accuracy", "acc"), ("cost", "cost"),
              ("reward", "reward"), ("malformed_rate", "malformed"))


def short_line(step: int, prefix: str, scalars: Mapping[str, float]) -> str:
  """'step 50 train: reward=0.61 acc=0.72 ...' with a handful of statistics."""
  parts = []
  for key, label in SHORT_KEYS:
    value = scalars.get(f"{prefix}/{key}")
    if value is not None and not any(p.startswith(label + "=") for p in parts):
      parts.append(f"{label}={value:.4g}")
  return f"step {step} {prefix}: " + " ".join(parts)


class _TqdmStream:
  """A stream that writes through `tqdm.write` (keeps the bar intact)."""

  def __init__(self, stream):
    self.stream = stream

  def write(self, text: str) -> None:
    if text.strip():
      tqdm.tqdm.write(text.rstrip("\n"), file=self.stream)

  def flush(self) -> None:
    self.stream.flush()


class ProgressBar:
  """tqdm over steps; `start_timing()` restarts the rate clock (after compiling)."""

  def __init__(self, total: int, initial: int, *, enabled: bool = True, desc: str = "train"):
    stream = sys.stderr
    self.bar = tqdm.tqdm(total=total, initial=initial, desc=desc, unit="step",
                         file=stream, dynamic_ncols=True, leave=False,
                         disable=not (enabled and stream.isatty()))

  def start_timing(self) -> None:
    """Counts the rate from now on: the first chunk's compilation is not in the ETA."""
    bar = self.bar
    if not bar.disable:
      bar.initial = bar.n
      bar.start_t = bar.last_print_t = bar._time()  # pylint: disable=protected-access
      bar.last_print_n = bar.n

  def update_to(self, step: int, postfix: str = "") -> None:
    if not self.bar.disable:
      self.bar.set_postfix_str(postfix, refresh=False)
      self.bar.update(step - self.bar.n)

  def close(self) -> None:
    self.bar.close()


@contextlib.contextmanager
def logs_through_tqdm():
  """absl log lines go through `tqdm.write` while the block runs."""
  handler = logging.get_absl_handler().python_handler
  previous = handler.stream
  if not isinstance(previous, _TqdmStream):  # nested: already redirected
    handler.stream = _TqdmStream(previous)
  try:
    yield
  finally:
    handler.stream = previous
