"""Resuming a work dir: only with the same table and the same training config.

A work dir with checkpoints is resumed by the next run given it. That run
must train the same thing: the same table (fingerprint) and the same config
up to `RESUMABLE_FIELDS` (how long, how often to log / evaluate / save, on
how many devices). Otherwise `WorkdirConflictError` names the differing
fields and nothing in the work dir is changed; with
`config.override_saved_config=True` the run goes on, warns with the same
list, and keeps the old record as `config.<step>.json` next to the new
`config.json`.
"""

from __future__ import annotations

import os
import shutil
from typing import Any, Mapping

from absl import logging

from recal_jax import checkpointing
from recal_jax.training.errors import WorkdirConflictError

# Fields a resumed run may change: they do not change what a step computes.
RESUMABLE_FIELDS = frozenset({
    "num_train_steps", "log_every_steps", "eval_every_steps", "checkpoint_every_steps",
    "max_checkpoints_to_keep", "best_checkpoints_to_keep", "num_devices", "distributed",
    "override_saved_config"})


def config_differences(saved: Mapping[str, Any], new: Mapping[str, Any],
                       prefix: str = "") -> list[str]:
  """['method: recal -> grpo', ...]: fields (dotted) that differ, not resumable."""
  out = []
  for key in sorted(set(saved) | set(new)):
    name = prefix + key
    if not prefix and key in RESUMABLE_FIELDS:
      continue
    old, value = saved.get(key, "<missing>"), new.get(key, "<missing>")
    if isinstance(old, Mapping) and isinstance(value, Mapping):
      out += config_differences(old, value, name + ".")
    elif old != value:
      out.append(f"{name}: {old!r} -> {value!r}")
  return out


def check_resume(workdir: str, checkpointer: checkpointing.Checkpointer,
                 config_json: Mapping[str, Any], description: Mapping[str, Any], *,
                 override: bool = False) -> None:
  """Refuses to resume `workdir` with another table or config (see module doc).

  Raises:
    WorkdirConflictError: naming the table fingerprints or the differing
      config fields (and the field that overrides).
  """
  latest = checkpointer.latest_step()
  if latest is None:
    return  # nothing to resume: this run's config.json is the record
  saved_table = checkpointer.saved_table()
  if saved_table is not None and saved_table.get("fingerprint") != description["fingerprint"]:
    raise WorkdirConflictError(
        f"{workdir} holds checkpoints trained on table fingerprint "
        f"{saved_table.get('fingerprint')}, but this run's table is "
        f"{description['fingerprint']}; use a fresh workdir")
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return
  differences = config_differences(checkpointing.read_json(path), config_json)
  if not differences:
    return
  listing = "; ".join(differences)
  if not override:
    raise WorkdirConflictError(
        f"{workdir} holds a run with another config ({listing}); use a fresh "
        f"workdir, or set config.override_saved_config=True to resume it anyway")
  logging.warning("Resuming %s with a changed config (%s): the old config is kept as "
                  "config.%d.json", workdir, listing, latest)
  shutil.copyfile(path, os.path.join(workdir, f"config.{latest}.json"))
