"""Checkpoints of a training run, with one Orbax `CheckpointManager`.

Layout of a work directory:

  workdir/
    config.json             the run's config (written at the start)
    table.json              `RoutingTable.describe()` of the training data
    checkpoints/<step>/     the kept checkpoints (see below)
      state/                the whole train state (`ocp.args.StandardSave`)
      params/               the policy parameters alone: `Router.load`
                            restores them without building an optimizer
      config/, table/       config.json and table.json again (JsonSave), so a
                            checkpoint directory is self-describing
      _CHECKPOINT_METADATA  Orbax's step metadata, with the validation
                            metrics of an evaluated step
    metrics.jsonl, tensorboard/   (see metrics_writer)

Which checkpoints are kept is Orbax's preservation policy: the latest
`max_to_keep` (`LatestN`) plus the `best_to_keep` best by `best_metric`
(`BestN`, higher is better, the earlier step on ties) among the checkpoints
saved with validation metrics. `best_step()` is the best of those on disk.

Crash safety (tests/reliability_test.py):

* Orbax writes a step into `<step>.orbax-checkpoint-tmp-*`, writes
  `commit_success.txt` into it, then renames it to `<step>`: a process killed
  mid-save leaves only the tmp directory, which is never listed as a step and
  which Orbax removes at start (`cleanup_tmp_directories`, `Checkpointer(...,
  cleanup_partial_saves=True)` in the trainer only: a reader must not remove
  a save that a running trainer has in progress).
* Deleting an old step renames it into `checkpoints/_deleting/` first
  (Orbax's `todelete_subdir`, an atomic rename), and `_deleting/` is then
  emptied: a kill during the delete never leaves a half-deleted `<step>`.
* A step counts only if it is `complete` (the commit marker and the state's
  metadata are there); `restore_latest` falls back to the next older complete
  step when one cannot be read (and raises `CheckpointError` when
  checkpoints exist but none can be read, rather than silently starting
  afresh), and `save` replaces a damaged directory of the same step.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any, Mapping

from absl import logging
import jax
from etils import epath
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as ocp_managers

# Written by Orbax into every step directory just before it is committed.
COMMIT_MARKER = "commit_success.txt"
_PARTIAL_SAVE_SUFFIX = ".orbax-checkpoint-tmp"
_DELETING = "_deleting"


class CheckpointError(RuntimeError):
  """Checkpoints exist in a work dir but none of them can be restored."""


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


class _CheckpointManager(ocp.CheckpointManager):
  """Orbax's manager, minus its own preemption queries.

  JAX's preemption sync point is "the largest counter any process reported,
  plus one": Orbax's `save` reports the step number, while the training loop
  (`training.preemption`) reports one count per chunk boundary. Mixing the
  two makes the sync point unreachable, so the manager leaves the question
  to the loop (it only used the answer for logging).
  """

  def reached_preemption(self, step: int) -> bool:
    del step
    return False


class Checkpointer:
  """Latest-`max_to_keep` plus best-`best_to_keep` checkpoints of a run.

  Args:
    workdir: the run's work directory (layout in the module docstring).
    max_to_keep: how many of the latest checkpoints to keep.
    best_metric: the validation statistic (higher is better) that ranks
      checkpoints saved with metrics; None: only the latest are kept.
    best_to_keep: how many of the best checkpoints to keep.
    config_json, table_description: written to `config.json` / `table.json`
      and into every checkpoint (None: not written; readers pass None).
    cleanup_partial_saves: remove the tmp directories of saves a killed
      process left behind (only for the process that trains).
  """

  def __init__(self, workdir: str, *, max_to_keep: int = 3, best_metric: str | None = None,
               best_to_keep: int = 1, config_json: Any = None,
               table_description: Any = None, cleanup_partial_saves: bool = False):
    self.workdir = os.path.abspath(workdir)
    self.best_metric = best_metric
    self.config_json = config_json if config_json is not None else {}
    self.table_description = table_description if table_description is not None else {}
    policies = [ocp_managers.LatestN(n=max_to_keep)]
    if best_metric:
      policies.append(ocp_managers.BestN(
          get_metric_fn=self._rank, n=best_to_keep, keep_checkpoints_without_metrics=False))
    self.manager = _CheckpointManager(
        os.path.join(self.workdir, "checkpoints"),
        options=ocp.CheckpointManagerOptions(
            create=True, enable_async_checkpointing=False,
            # best_fn makes Orbax write the metrics item (BestN reads them back).
            best_fn=self._rank if best_metric else None, best_mode="max",
            preservation_policy=ocp_managers.AnyPreservationPolicy(policies),
            cleanup_tmp_directories=cleanup_partial_saves, todelete_subdir=_DELETING))
    if cleanup_partial_saves:
      # Orbax removes the tmp dirs in the background before its first save;
      # wait here so the work dir is clean from the start.
      getattr(self.manager, "_maybe_await_cleanup_tmp_directory", lambda: None)()
      self._empty_deleting()
    self._unreadable: set[int] = set()  # steps that failed to restore
    self._write_config = config_json is not None
    self._write_table = table_description is not None

  def _rank(self, metrics: Mapping[str, Any]) -> tuple[float, int]:
    """Sort key of a checkpoint's metrics: the best metric, then the earlier step."""
    return float(metrics[self.best_metric]), -int(metrics["step"])

  def write_descriptions(self) -> None:
    """Writes `config.json` / `table.json` (process 0).

    The trainer calls this only after checking that the work dir's saved
    checkpoints belong to this table and config, so a refused run changes
    nothing.
    """
    if jax.process_index() != 0:
      return
    os.makedirs(self.workdir, exist_ok=True)
    if self._write_config:
      _write_json(os.path.join(self.workdir, "config.json"), self.config_json)
    if self._write_table:
      _write_json(os.path.join(self.workdir, "table.json"), self.table_description)

  # ---------------------------------------------------------- integrity
  def _empty_deleting(self) -> None:
    """Removes what Orbax renamed away for deletion (a kill may leave some)."""
    path = os.path.join(self.workdir, "checkpoints", _DELETING)
    if jax.process_index() == 0 and os.path.isdir(path):
      shutil.rmtree(path, ignore_errors=True)

  def is_complete(self, step: int) -> bool:
    """Whether step directory `step` holds a committed save.

    Checks the files a committed save always has: the commit marker and the
    checkpoint metadata of the step, and the marker and metadata of its
    `state` item. A directory damaged by hand usually lacks one of them; one
    that passes may still fail to restore, which `restore_latest` handles.
    """
    path = os.path.join(os.fspath(self.manager.directory), str(int(step)))
    required = (COMMIT_MARKER, "_CHECKPOINT_METADATA",
                os.path.join("state", COMMIT_MARKER), os.path.join("state", "_METADATA"))
    return all(os.path.isfile(os.path.join(path, name)) for name in required)

  def complete_steps(self) -> list[int]:
    """Steps in `checkpoints/` that are `is_complete`, ascending."""
    return [s for s in sorted(self.manager.all_steps()) if self.is_complete(s)]

  def _drop_if_damaged(self, step: int) -> bool:
    """Deletes step directory `step` if it is incomplete or unreadable.

    Returns whether `step` is now absent (so it may be saved).
    """
    if step not in self.manager.all_steps():
      return True
    damaged = not self.is_complete(step) or step in self._unreadable
    if damaged:
      logging.warning("Replacing damaged checkpoint %d in %s", step, self.manager.directory)
      self.manager.delete(int(step))
      self._unreadable.discard(step)
    return damaged

  # --------------------------------------------------------------- save
  def latest_step(self) -> int | None:
    """The newest complete step in `checkpoints/` (None if there is none)."""
    steps = self.complete_steps()
    return steps[-1] if steps else None

  def save(self, step: int, state: Any, metrics: Mapping[str, float] | None = None) -> None:
    """Saves `state` (and its params as their own item) as checkpoint `step`.

    `metrics` (validation statistics including `best_metric`) make the step a
    candidate for the best checkpoints. A complete checkpoint of `step`
    already there is kept (a resumed run computes the same state); a damaged
    one is replaced.
    """
    if not self._drop_if_damaged(step):
      return
    if metrics is not None:
      if self.best_metric not in metrics:
        raise ValueError(f"best_metric={self.best_metric!r} is not an evaluation "
                         f"statistic; choose from {sorted(metrics)}")
      metrics = dict(metrics, step=int(step))
    items = dict(state=ocp.args.StandardSave(state),
                 config=ocp.args.JsonSave(self.config_json),
                 table=ocp.args.JsonSave(self.table_description))
    if hasattr(state, "params"):
      items["params"] = ocp.args.StandardSave(state.params)
    args = ocp.args.Composite(**items)
    self.manager.save(int(step), args=args, metrics=metrics, force=True)
    self.manager.wait_until_finished()
    self._empty_deleting()

  # ------------------------------------------------------------ restore
  def restore(self, step: int, target: Any) -> Any:
    """The state saved at `step`, shaped and sharded like `target`."""
    restored = self.manager.restore(int(step), args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state(target))))
    return restored.state

  def restore_params(self, step: int) -> Any:
    """The policy parameters saved at `step`, on this process's first device.

    No train state or optimizer is needed: the target is built from the
    item's metadata (shapes, dtypes), so params saved by any device topology
    (e.g. a multi-host run) restore on one device.
    """
    item = epath.Path(self.manager.directory) / str(int(step)) / "params"
    # The item's handler reads its own metadata; a `Checkpointer` would also
    # look for a step-level metadata file inside the item and log a warning.
    metadata = ocp.StandardCheckpointHandler().metadata(item)
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), metadata)
    return self.manager.restore(int(step), args=ocp.args.Composite(
        params=ocp.args.StandardRestore(target))).params

  def restore_latest(self, target: Any) -> Any | None:
    """The newest state that restores, like `target`; None for a fresh run.

    Incomplete step directories are skipped; a complete one that fails to
    restore is logged and the next older one is tried (and it is replaced
    when that step is saved again).

    Raises:
      CheckpointError: step directories exist but none restores (a damaged
        work dir, or a `target` of another model); nothing is started afresh
        over them.
    """
    errors = []
    for step in reversed(self.complete_steps()):
      logging.info("Restoring checkpoint %d from %s", step, self.manager.directory)
      try:
        return self.restore(step, target)
      except Exception as e:  # pylint: disable=broad-except
        logging.warning("Checkpoint %d in %s cannot be restored (%s: %s); trying an "
                        "older one", step, self.manager.directory, type(e).__name__, e)
        self._unreadable.add(step)
        errors.append(f"step {step}: {type(e).__name__}: {e}")
    present = sorted(self.manager.all_steps())
    if present:
      incomplete = [s for s in present if s not in self.complete_steps()]
      raise CheckpointError(
          f"{self.manager.directory} holds checkpoints {present} but none can be "
          f"restored (incomplete: {incomplete}; errors: {errors}). Move them away "
          f"(or use a fresh workdir) to start afresh")
    return None

  def saved_table(self, step: int | None = None) -> dict | None:
    """The `table.json` saved with checkpoint `step` (default: the newest
    complete checkpoint whose table reads; None if there is none)."""
    steps = [step] if step is not None else list(reversed(self.complete_steps()))
    for candidate in steps:
      try:
        return self.manager.restore(candidate, args=ocp.args.Composite(
            table=ocp.args.JsonRestore())).table
      except Exception:  # pylint: disable=broad-except
        if step is not None:
          raise
        logging.warning("The table of checkpoint %d cannot be read; trying an "
                        "older one", candidate)
    return None

  # --------------------------------------------------------------- best
  def evaluated_steps(self) -> dict[int, dict]:
    """{step: validation metrics} of the complete checkpoints saved with metrics."""
    out = {}
    for step in self.complete_steps():
      metrics = self.manager.metrics(step)
      if metrics and self.best_metric in metrics:
        out[step] = dict(metrics)
    return out

  def best_step(self) -> int | None:
    """The complete checkpoint with the highest `best_metric` (the earlier step
    on ties), or None if no checkpoint was saved with metrics."""
    evaluated = self.evaluated_steps()
    if not evaluated:
      return None
    return max(evaluated, key=lambda s: self._rank(evaluated[s]))

  def best_value(self) -> float | None:
    step = self.best_step()
    return None if step is None else float(self.manager.metrics(step)[self.best_metric])

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()
