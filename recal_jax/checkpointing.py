"""Checkpoints of a training run, with Orbax.

Layout of a work directory:

  workdir/
    config.json             the run's config (written at the start)
    table.json              `RoutingTable.describe()` of the training data
    checkpoints/<step>/     the latest `max_to_keep` checkpoints
      state/                the train state (`ocp.args.StandardSave`)
      config/, table/       config.json and table.json again (JsonSave), so a
                            checkpoint directory is self-describing
    best/<step>/            the best checkpoint on validation (and the one
                            before it), same layout, plus best/best.json
                            {step, metric, value} naming the best
    metrics.jsonl, tensorboard/   (see metrics_writer)

`Checkpointer.restore_latest` returns the newest state in `checkpoints/` (or
None for a fresh run); the training loop resumes from it automatically. Saves
are synchronous: the train step donates its input state, so the arrays must be
written before the next step reuses their buffers.

Crash safety (tests/reliability_test.py):

* Orbax (0.12, local disk) writes a step into `<step>.orbax-checkpoint-tmp`,
  writes `commit_success.txt` into it, then renames it to `<step>`: a process
  killed mid-save leaves only the tmp directory, which Orbax never lists as a
  step (and removes when that step is saved again; `Checkpointer(...,
  cleanup_partial_saves=True)` removes any at start).
* Orbax itself calls any directory named `<step>` finalized, even an empty
  one, and deletes old steps (`max_to_keep`) with a plain recursive delete, so
  a kill during that delete leaves a half-deleted `<step>`. Hence the guard
  here: a step counts only if it is `complete` (the commit marker and the
  state's metadata are there), `restore_latest` falls back to the next older
  complete step when one cannot be read (and raises `CheckpointError` when
  checkpoints exist but none can be read, rather than silently starting
  afresh), and `save` replaces a damaged directory of the same step.
* `best/` keeps two checkpoints and `best.json` is replaced atomically after
  the new one is committed, so `best.json` always names a step that exists
  (a kill in between leaves the previous best, still on disk).
"""

from __future__ import annotations

import glob
import json
import os
import shutil
from typing import Any

from absl import logging
import jax
import orbax.checkpoint as ocp

BEST_RECORD = "best.json"
# Written by Orbax into every step directory just before it is committed.
COMMIT_MARKER = "commit_success.txt"
_PARTIAL_SAVE_SUFFIX = ".orbax-checkpoint-tmp"


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


class Checkpointer:
  """Latest-`max_to_keep` checkpoints plus the best-on-validation checkpoint.

  Args:
    workdir: the run's work directory (layout in the module docstring).
    max_to_keep: how many of the latest checkpoints to keep.
    config_json, table_description: written to `config.json` / `table.json`
      and into every checkpoint (None: not written; readers pass None).
    cleanup_partial_saves: remove the tmp directories of saves a killed
      process left behind. Only for the process that trains: a reader must
      not remove a save that a running trainer has in progress.
  """

  def __init__(self, workdir: str, *, max_to_keep: int = 3,
               config_json: Any = None, table_description: Any = None,
               cleanup_partial_saves: bool = False):
    self.workdir = os.path.abspath(workdir)
    self.config_json = config_json if config_json is not None else {}
    self.table_description = table_description if table_description is not None else {}
    if cleanup_partial_saves and jax.process_index() == 0:
      self._remove_partial_saves()
    options = dict(create=True, enable_async_checkpointing=False)
    self.manager = ocp.CheckpointManager(
        os.path.join(self.workdir, "checkpoints"),
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, **options))
    # Two kept: the previous best survives until best.json names the new one.
    self.best_manager = ocp.CheckpointManager(
        os.path.join(self.workdir, "best"),
        options=ocp.CheckpointManagerOptions(max_to_keep=2, **options))
    self._unreadable: set[int] = set()  # steps that failed to restore
    self._write_config = config_json is not None
    self._write_table = table_description is not None

  def write_descriptions(self) -> None:
    """Writes `config.json` / `table.json` (process 0).

    The trainer calls this only after checking that the work dir's saved
    checkpoints belong to this table, so a refused run changes nothing.
    """
    if jax.process_index() != 0:
      return
    os.makedirs(self.workdir, exist_ok=True)
    if self._write_config:
      _write_json(os.path.join(self.workdir, "config.json"), self.config_json)
    if self._write_table:
      _write_json(os.path.join(self.workdir, "table.json"), self.table_description)

  def _args(self, state):
    return ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        config=ocp.args.JsonSave(self.config_json),
        table=ocp.args.JsonSave(self.table_description))

  # ---------------------------------------------------------- integrity
  def _remove_partial_saves(self) -> None:
    """Deletes `<step>.orbax-checkpoint-tmp*` dirs a killed save left behind."""
    for sub in ("checkpoints", "best"):
      for path in glob.glob(os.path.join(self.workdir, sub, f"*{_PARTIAL_SAVE_SUFFIX}*")):
        logging.info("Removing the unfinished save %s", path)
        shutil.rmtree(path, ignore_errors=True)

  @staticmethod
  def is_complete(manager: ocp.CheckpointManager, step: int) -> bool:
    """Whether step directory `step` of `manager` holds a committed save.

    Checks the files a committed save always has: the commit marker and the
    checkpoint metadata of the step, and the marker and metadata of its
    `state` item. A directory a kill left half-deleted (or damaged by hand)
    usually lacks one of them; one that passes may still fail to restore,
    which `restore_latest` handles.
    """
    path = os.path.join(os.fspath(manager.directory), str(int(step)))
    required = (COMMIT_MARKER, "_CHECKPOINT_METADATA",
                os.path.join("state", COMMIT_MARKER), os.path.join("state", "_METADATA"))
    return all(os.path.isfile(os.path.join(path, name)) for name in required)

  def complete_steps(self, *, best: bool = False) -> list[int]:
    """Steps in `checkpoints/` (or `best/`) that are `is_complete`, ascending."""
    manager = self.best_manager if best else self.manager
    return [s for s in sorted(manager.all_steps()) if self.is_complete(manager, s)]

  def _drop_if_damaged(self, manager: ocp.CheckpointManager, step: int) -> bool:
    """Deletes step directory `step` if it is incomplete or unreadable.

    Returns whether `step` is now absent (so it may be saved).
    """
    if step not in manager.all_steps():
      return True
    damaged = not self.is_complete(manager, step) or (
        manager is self.manager and step in self._unreadable)
    if damaged:
      logging.warning("Replacing damaged checkpoint %d in %s", step, manager.directory)
      manager.delete(int(step))
      self._unreadable.discard(step)
    return damaged

  # ------------------------------------------------------------- latest
  def latest_step(self) -> int | None:
    """The newest complete step in `checkpoints/` (None if there is none)."""
    steps = self.complete_steps()
    return steps[-1] if steps else None

  def save(self, step: int, state: Any) -> None:
    """Saves `state` as checkpoint `step` (keeping the newest `max_to_keep`).

    A complete checkpoint of `step` already there is kept (a resumed run
    computes the same state); a damaged one is replaced.
    """
    if not self._drop_if_damaged(self.manager, step):
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
  def best_record(self) -> dict | None:
    """{step, metric, value} of the best checkpoint so far, or None.

    None also when `best.json` names a step that is not a complete checkpoint
    in `best/` (a damaged work dir): the next evaluation then saves a new best.
    """
    path = os.path.join(self.workdir, "best", BEST_RECORD)
    if not os.path.exists(path):
      return None
    record = read_json(path)
    if int(record["step"]) not in self.complete_steps(best=True):
      logging.warning("%s names step %s, which is not a complete checkpoint in %s; "
                      "ignoring it", path, record["step"], self.best_manager.directory)
      return None
    return record

  def save_best(self, step: int, state: Any, metric: str, value: float,
                metrics: dict | None = None) -> None:
    """Makes `state` at `step` the best checkpoint.

    The checkpoint is committed before `best.json` is replaced (atomically),
    and the previous best is kept, so `best.json` always names a checkpoint
    on disk, whenever the process is killed.
    """
    if self._drop_if_damaged(self.best_manager, step):
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
