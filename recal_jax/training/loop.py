"""The training loop: `train_and_evaluate(config, workdir)`.

  1. load the routing table, build the policy, the method and the optimiser
     (`learner`); check the config and that the work dir belongs to this
     table and config (`workdir.check_resume`);
  2. restore the latest checkpoint of `workdir` if there is one, otherwise
     initialise (and evaluate / checkpoint step 0);
  3. run chunks of steps on the device (`learner.make_step_functions(...)
     .train_chunk`: K steps under `lax.scan`, one dispatch) up to the next
     logging, evaluation or checkpoint boundary; then, on the host: stop on a
     non-finite statistic, log, evaluate greedy routes on the validation
     split, checkpoint (with the validation metrics, which rank the best
     checkpoints), and stop on preemption;
  4. evaluate the best-on-validation checkpoint on validation and test next to
     the best single arm (chosen on train) and the per-query oracle.

Faults (tests/reliability_test.py):

  * killed (SIGKILL, OOM, node loss): rerunning with the same workdir resumes
    from the newest complete checkpoint and ends with bitwise the same state
    as an uninterrupted run (batches and rollout keys are pure functions of
    the step); `metrics.jsonl` records after that checkpoint are dropped, so
    re-run steps are not listed twice.
  * preempted (SIGTERM): the chunk in flight finishes, a checkpoint of it is
    saved, and `Preempted` is raised; with several processes all of them save
    the same step (`preemption.PreemptionWatcher`).
  * a NaN / inf loss, gradient or statistic, or a rollout whose reward is not
    finite: `NonFiniteError` naming the step and the statistic; the bad state
    is never saved, so the newest checkpoint is the last good one.
"""

from __future__ import annotations

import functools
import json
import os
import time
from typing import Any, Mapping

from absl import logging
import jax
from jax.sharding import NamedSharding, PartitionSpec
import ml_collections
import numpy as np

from recal_jax import advantage
from recal_jax import checkpointing
from recal_jax import metrics_writer
from recal_jax import outcome_model as outcome_lib
from recal_jax import policies
from recal_jax import rollout as rollout_lib
from recal_jax.data import table as table_lib
from recal_jax.training import console
from recal_jax.training import evaluation
from recal_jax.training import learner
from recal_jax.training import preemption
from recal_jax.training import workdir as workdir_lib
from recal_jax.training.errors import ConfigError, NonFiniteError


def load_data(config: ml_collections.ConfigDict) -> table_lib.RoutingTable:
  """The routing table named by `config.data`."""
  from recal_jax import data as data_lib  # pylint: disable=import-outside-toplevel
  return data_lib.load_table_from_config(config.data)


def method_from_config(config: ml_collections.ConfigDict) -> advantage.ReCalConfig:
  """`method_config(config.method)` with `config.method_overrides` (JSON) applied."""
  overrides = config.get("method_overrides", "") or "{}"
  overrides = json.loads(overrides) if isinstance(overrides, str) else dict(overrides)
  def plain(value):  # nested config fields (None: left unset) -> plain values
    if hasattr(value, "items"):
      return {k: plain(v) for k, v in value.items() if v is not None} or None
    return tuple(value) if isinstance(value, list) else value
  overrides = {k: plain(v) for k, v in overrides.items() if plain(v) is not None}
  # Weights are by component name: a JSON object, e.g. {"cost": 0.2}.
  return advantage.method_config(config.method, **overrides)


_DISTRIBUTED_INITIALIZED = False


def maybe_initialize_distributed(config: ml_collections.ConfigDict) -> None:
  """`jax.distributed.initialize()` once, when `config.distributed` is set.

  On a TPU pod slice or a SLURM / Open MPI cluster the coordinator address,
  process count and id are discovered from the environment; elsewhere set
  them through `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES` and
  `JAX_PROCESS_ID` (WORKSPACE.md). Must run before anything touches a device.
  """
  global _DISTRIBUTED_INITIALIZED
  if config.get("distributed", False) and not _DISTRIBUTED_INITIALIZED:
    if os.environ.get("JAX_CPU_COLLECTIVES_IMPLEMENTATION"):
      jax.config.update("jax_cpu_collectives_implementation",
                        os.environ["JAX_CPU_COLLECTIVES_IMPLEMENTATION"])
    kwargs = {}
    if os.environ.get("JAX_NUM_PROCESSES"):  # JAX reads only the coordinator address
      kwargs = dict(num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
                    process_id=int(os.environ["JAX_PROCESS_ID"]))
    jax.distributed.initialize(**kwargs)
    _DISTRIBUTED_INITIALIZED = True
    logging.info("jax.distributed initialized: process %d of %d, %d global devices",
                 jax.process_index(), jax.process_count(), jax.device_count())


def check_finite(step: int, metrics: Mapping[str, float]) -> None:
  """Raises `NonFiniteError` naming the step and the first bad statistic.

  Also for rollouts whose reward is NaN / inf (`advantage/invalid_rows` > 0):
  the advantage functions drop such rows inside `jit`, which must not pass
  silently in training.
  """
  order = ["loss/loss", "grad_norm", "param_norm"] + sorted(metrics)
  for name in order:
    value = metrics.get(name)
    if value is not None and not np.isfinite(float(value)):
      raise NonFiniteError(
          f"step {step}: non-finite {name} = {value}; stopping. The last good "
          f"checkpoint is kept (lower the learning rate or check the rewards)")
  invalid = metrics.get("advantage/invalid_rows", 0.0)
  if invalid > 0:
    raise NonFiniteError(
        f"step {step}: advantage/invalid_rows = {invalid:g}: rollouts with a non-finite "
        f"reward; stopping. The last good checkpoint is kept (check the outcomes "
        f"and config.cost_scale)")


def split_tables(table: table_lib.RoutingTable) -> dict[str, table_lib.RoutingTable]:
  """{'train', 'validation', 'test'} -> the queries of that split."""
  return {split: table.subset(split) for split in table_lib.SPLIT_NAMES}


def check_config(config: ml_collections.ConfigDict, num_train_queries: int) -> None:
  """`ConfigError` for values the loop cannot run with; a warning for odd ones."""
  for field in ("num_train_steps", "batch_size", "group_size", "log_every_steps",
                "eval_every_steps", "checkpoint_every_steps"):
    value = int(config[field])
    minimum = 0 if field == "num_train_steps" else 1
    if value < minimum:
      raise ConfigError(f"config.{field} must be >= {minimum}, got {value}")
  if config.batch_size > num_train_queries:
    logging.warning("config.batch_size=%d is larger than the %d training queries: "
                    "every batch repeats queries", config.batch_size, num_train_queries)


def next_boundary(step: int, config: ml_collections.ConfigDict) -> int:
  """The first step after `step` that is logged, evaluated, checkpointed or last."""
  num_steps = int(config.num_train_steps)
  candidates = [num_steps]
  for every in (config.log_every_steps, config.eval_every_steps,
                config.checkpoint_every_steps):
    candidates.append((step // int(every) + 1) * int(every))
  return min(candidates)


def window_means(window: list[dict[str, np.ndarray]], seconds: float) -> dict[str, float]:
  """Means over the steps of the logging window (float64), with steps/s."""
  stacked = {k: np.concatenate([np.asarray(w[k], np.float64) for w in window])
             for k in window[0]}
  means = {f"train/{k}": float(v.mean()) for k, v in stacked.items()}
  means["train/steps_per_second"] = len(next(iter(stacked.values()))) / max(seconds, 1e-9)
  return means


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       *, table: table_lib.RoutingTable | None = None,
                       environment: rollout_lib.LiveEnvironment | None = None,
                       show_progress: bool = True) -> dict:
  """Trains a router; returns the final metrics (see `comparison_rows`).

  Args:
    config: the run's config (`experiments/configs/default.py` documents it).
    workdir: where checkpoints, metrics and TensorBoard files go. If it holds
      checkpoints, training resumes from the latest one.
    table: use this routing table instead of loading `config.data`.
    environment: with `config.environment == 'live'`, the `LiveEnvironment`
      answering routes (default: `LoggedEnvironment` over the training split,
      which reproduces the fused in-jit lookup exactly).
    show_progress: a tqdm bar on a terminal (`experiments.compare` shows one
      bar over all its runs instead).

  Returns:
    A flat dict: 'step', 'best_step', 'final/<split>/<stat>' (last params),
    'router/<split>/<stat>' (best-on-validation params),
    'best_single/<split>/<stat>', 'oracle/<split>/<stat>', 'best_single_arm',
    'initial/validation/<stat>', and 'train/<name>' (last logged means).

  Raises:
    ConfigError: a config value the loop cannot run with.
    WorkdirConflictError: `workdir` holds a run of another table or config.
    NonFiniteError: a loss, gradient or other statistic became NaN / inf.
    Preempted: SIGTERM arrived; the current step was checkpointed first.
    table_lib.RoutingDataError: `table` is malformed (e.g. a NaN outcome).
    checkpointing.CheckpointError: `workdir` holds checkpoints, none readable.
  """
  console.quiet_third_party_logs()
  maybe_initialize_distributed(config)
  workdir = os.path.abspath(os.path.expanduser(workdir))
  is_chief = jax.process_index() == 0
  if table is None:
    table = load_data(config)
  table.validate()  # loaders validate; a table passed in may not have been
  splits = split_tables(table)
  train_table, validation_table = splits["train"], splits["validation"]
  if validation_table.num_queries == 0:
    raise ConfigError(f"table {table.name!r} has no validation queries")
  check_config(config, train_table.num_queries)

  mesh = learner.make_mesh(int(config.num_devices))
  num_devices = mesh.devices.size
  if config.batch_size % num_devices:
    raise ConfigError(f"config.batch_size={config.batch_size} must be divisible by "
                      f"the {num_devices} devices of the 'data' mesh axis")
  if config.environment not in ("logged", "live"):
    raise ConfigError(f"config.environment must be 'logged' or 'live', got "
                      f"{config.environment!r}")
  policy = policies.make_policy(config.policy, table)
  method = method_from_config(config)
  tx = learner.make_optimizer(config)
  replicated = NamedSharding(mesh, PartitionSpec())
  device_train = rollout_lib.device_table(train_table, replicated)
  fns = learner.make_step_functions(policy, tx, method, config, table=device_train,
                                    num_datasets=table.num_datasets, mesh=mesh)
  logging.info("Training a %s router with %r on %s: %d train / %d validation queries, "
               "%d arms, %d device(s)", config.policy.kind, config.method, table.name,
               train_table.num_queries, validation_table.num_queries, table.num_arms,
               num_devices)

  init_fn = jax.jit(functools.partial(
      learner.init_state, policy, tx, feature_dim=table.feature_dim,
      num_datasets=table.num_datasets), out_shardings=replicated)
  state = init_fn(learner.init_key(int(config.seed)))

  description = table.describe()
  config_json = json.loads(config.to_json_best_effort())
  checkpointer = checkpointing.Checkpointer(
      workdir, max_to_keep=int(config.max_checkpoints_to_keep),
      best_metric=config.best_metric,
      best_to_keep=int(config.get("best_checkpoints_to_keep", 1)),
      config_json=config_json, table_description=description, cleanup_partial_saves=True)
  workdir_lib.check_resume(workdir, checkpointer, config_json, description,
                           override=bool(config.get("override_saved_config", False)))
  checkpointer.write_descriptions()
  if is_chief and not os.path.exists(os.path.join(workdir, outcome_lib.FILENAME)):
    # Expected score / cost per arm for routing new queries (recal_jax.router).
    outcome_lib.fit(train_table).save(workdir)
  restored = checkpointer.restore_latest(state)
  if restored is not None:
    state = restored
  initial_step = int(jax.device_get(state.step))

  writer = metrics_writer.MetricsWriter(workdir, enabled=is_chief)
  if initial_step:
    writer.drop_after(initial_step)  # steps re-run after a kill are logged once
  evaluate_validation = evaluation.Evaluator(validation_table, fns.greedy_step, method,
                                             config.cost_scale, replicated)
  sampler = learner.QuerySampler(train_table.num_queries, int(config.batch_size),
                                 int(config.seed))
  live_env = None
  if config.environment == "live":
    live_env = environment or rollout_lib.LoggedEnvironment(train_table)

  result: dict[str, Any] = {}
  num_steps = int(config.num_train_steps)

  def run_evaluation(step: int, params) -> dict:
    scalars = evaluation.summarize(evaluate_validation(params), "validation")
    writer.write_scalars(step, scalars)
    logging.info("%s", console.short_line(step, "validation", scalars))
    return scalars

  def run_chunk(state, step: int, length: int):
    """`length` steps from `step`: one device dispatch (logged data)."""
    if live_env is None:
      indices = learner.global_batch(sampler.chunk(step, length), fns.chunk_sharding)
      state, metrics = fns.train_chunk(state, indices)
      return state, jax.device_get(metrics)  # the sync that ends the dispatch
    query_indices = learner.global_batch(sampler.indices(step), fns.batch_sharding)
    batch = rollout_lib.collect_rollouts(
        policy, state.params, device_train, query_indices,
        jax.random.fold_in(fns.rollout_key, step), live_env,
        group_size=int(config.group_size), cost_scale=float(config.cost_scale),
        sample_fn=fns.sample_step, assemble_fn=fns.assemble_step)
    state, metrics = fns.learn_step(state, batch)
    return state, {k: np.asarray(v)[None] for k, v in jax.device_get(metrics).items()}

  progress = console.ProgressBar(num_steps, initial_step,
                                 enabled=is_chief and show_progress)
  window: list[dict[str, np.ndarray]] = []
  window_start = time.perf_counter()
  last_logged: dict[str, float] = {}
  step = initial_step
  # From here on SIGTERM is recorded, not fatal: the loop checkpoints and
  # raises `Preempted` at the next chunk boundary.
  watcher = preemption.PreemptionWatcher().__enter__()
  try:
    with console.logs_through_tqdm():
      if initial_step == 0:
        scalars = run_evaluation(0, state.params)
        result.update({f"initial/{k}": v for k, v in scalars.items()})
        checkpointer.save(0, state, scalars)
      else:
        logging.info("Resumed from step %d", initial_step)
      while step < num_steps:
        if watcher.reached(step):
          checkpointer.save(step, state)
          logging.warning("Preempted by %s at step %d: saved checkpoint %d in %s; "
                          "rerun with the same workdir to resume", watcher.signal_name,
                          step, step, workdir)
          raise preemption.Preempted(step, watcher.signal_name, workdir)
        length = next_boundary(step, config) - step if live_env is None else 1
        state, metrics = run_chunk(state, step, length)
        for k in range(length):
          check_finite(step + k + 1, {name: v[k] for name, v in metrics.items()})
        if step == initial_step:
          progress.start_timing()  # the ETA leaves the compilation out
        step += length
        window.append(metrics)
        progress.update_to(step, f"reward {float(metrics['rollout/reward'][-1]):.3f}")
        if step % config.log_every_steps == 0 or step == num_steps:
          last_logged = window_means(window, time.perf_counter() - window_start)
          writer.write_scalars(step, last_logged)
          logging.info("%s", console.short_line(step, "train", last_logged))
          window, window_start = [], time.perf_counter()
        scalars = None
        if step % config.eval_every_steps == 0 or step == num_steps:
          scalars = run_evaluation(step, state.params)
        if scalars is not None or step % config.checkpoint_every_steps == 0:
          checkpointer.save(step, state, scalars)
  except BaseException:
    # The newest checkpoint stays the last good state; close files cleanly.
    progress.close()
    writer.close()
    checkpointer.close()
    raise
  finally:
    watcher.__exit__(None, None, None)
  progress.close()
  writer.flush()
  result.update(final_evaluation(splits, fns, method, config, checkpointer, state, step))
  result.update(last_logged)
  writer.write_scalars(step, {k: v for k, v in result.items()
                              if k.startswith(("router/", "best_single/", "oracle/"))})
  writer.close()
  checkpointer.close()
  if is_chief:
    with open(os.path.join(workdir, "final_metrics.json"), "w") as f:
      json.dump(result, f, indent=2, sort_keys=True)
  return result


def final_evaluation(splits, fns, method, config, checkpointer, state, step) -> dict:
  """Last params and best-on-validation params (from `checkpointer`) on every split."""
  best_step = checkpointer.best_step()
  best_params = (state.params if best_step is None
                 else checkpointer.restore(best_step, state).params)
  return evaluation.final_metrics(
      splits, fns.greedy_step, method, config, step=step, last_params=state.params,
      best_step=step if best_step is None else best_step, best_params=best_params,
      sharding=fns.replicated)
