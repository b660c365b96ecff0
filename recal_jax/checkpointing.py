"""Checkpoints of a training run, with Orbax.

Layout of a work directory:

  workdir/
    config.json             the run's config (written at the start)
    table.json              `RoutingTable.describe()` of the training data
    checkpoints/<step>/     the latest `max_to_keep` checkpoints
      state/                the train state (`ocp.args.StandardSave`)
      config/, table/       config.json and table.json again (JsonSave), so a
                            checkpoint directory is self-describing
    best/<step>/            the single best checkpoint on validation, same
                            layout, plus best/best.json {step, metric, value}
    metrics.jsonl, tensorboard/   (see metrics_writer)

`Checkpointer.restore_latest` returns the newest state in `checkpoints/` (or
None for a fresh run); the training loop resumes from it automatically. Saves
are synchronous: the train step donates its input state, so the arrays must be
written before the next step reuses their buffers.
"""

from __future__ import annotations

import json
import os
from typing import Any

from absl import logging
import jax
import orbax.checkpoint as ocp

BEST_RECORD = "best.json"


def _write_json(path: str, value: Any) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(value, f, indent=2, sort_keys=True)
  os.replace(tmp, path)


def read_json(path: str) -> Any:
  with open(path) as f:
    return json.load(f)


def abstract_state(state: Any) -> Any:
  """ShapeDtypeStructs (with shardings) of `state`: the restore target."""
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, state)


class Checkpointer:
  """Latest-`max_to_keep` checkpoints plus one best-on-validation checkpoint."""

  def __init__(self, workdir: str, *, max_to_keep: int = 3,
               config_json: Any = None, table_description: Any = None):
    self.workdir = os.path.abspath(workdir)
    self.config_json = config_json if config_json is not None else {}
    self.table_description = table_description if table_description is not None else {}
    options = dict(create=True, enable_async_checkpointing=False)
    self.manager = ocp.CheckpointManager(
        os.path.join(self.workdir, "checkpoints"),
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, **options))
    self.best_manager = ocp.CheckpointManager(
        os.path.join(self.workdir, "best"),
        options=ocp.CheckpointManagerOptions(max_to_keep=1, **options))
    if jax.process_index() == 0:
      os.makedirs(self.workdir, exist_ok=True)
      if config_json is not None:
        _write_json(os.path.join(self.workdir, "config.json"), self.config_json)
      if table_description is not None:
        _write_json(os.path.join(self.workdir, "table.json"), self.table_description)

  def _args(self, state):
    return ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        config=ocp.args.JsonSave(self.config_json),
        table=ocp.args.JsonSave(self.table_description))

  # ------------------------------------------------------------- latest
  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: Any) -> None:
    """Saves `state` as checkpoint `step` (keeping the newest `max_to_keep`)."""
    if step in self.manager.all_steps():
      return
    self.manager.save(int(step), args=self._args(state), force=True)
    self.manager.wait_until_finished()

  def restore(self, step: int, target: Any, *, best: bool = False) -> Any:
    """The state saved at `step`, shaped and sharded like `target`."""
    manager = self.best_manager if best else self.manager
    restored = manager.restore(int(step), args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state(target))))
    return restored.state

  def restore_latest(self, target: Any) -> Any | None:
    """The newest saved state (None if there is none), like `target`."""
    step = self.latest_step()
    if step is None:
      return None
    logging.info("Restoring checkpoint %d from %s", step, self.manager.directory)
    return self.restore(step, target)

  def saved_table(self, step: int | None = None) -> dict | None:
    """The `table.json` saved with checkpoint `step` (default: latest)."""
    step = self.latest_step() if step is None else step
    if step is None:
      return None
    return self.manager.restore(step, args=ocp.args.Composite(
        table=ocp.args.JsonRestore())).table

  # --------------------------------------------------------------- best
  def best_record(self) -> dict | None:
    """{step, metric, value} of the best checkpoint so far, or None."""
    path = os.path.join(self.workdir, "best", BEST_RECORD)
    if not os.path.exists(path) or self.best_manager.latest_step() is None:
      return None
    return read_json(path)

  def save_best(self, step: int, state: Any, metric: str, value: float,
                metrics: dict | None = None) -> None:
    """Replaces the best checkpoint with `state` at `step`."""
    if step not in self.best_manager.all_steps():
      self.best_manager.save(int(step), args=self._args(state), force=True)
      self.best_manager.wait_until_finished()
    if jax.process_index() == 0:
      _write_json(os.path.join(self.workdir, "best", BEST_RECORD),
                  {"step": int(step), "metric": metric, "value": float(value),
                   "metrics": metrics or {}})

  def restore_best(self, target: Any) -> Any | None:
    record = self.best_record()
    if record is None:
      return None
    return self.restore(record["step"], target, best=True)

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.best_manager.wait_until_finished()
    self.manager.close()
    self.best_manager.close()
