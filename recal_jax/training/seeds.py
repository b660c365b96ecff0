"""Several seeds of one run trained in one compiled program (`experiments.compare`).

`train_seeds(config, seeds, table=...)` is `train_and_evaluate` for S seeds at
once: the train states (params, optimiser state, running dataset statistics)
are stacked along a leading seed axis, and each chunk of steps is one
dispatch of

  jit(vmap(chunk_fn, in_axes=(seed, shared table, seed, seed)))
      (states [S, ...], device_table, rollout_keys [S], query_indices [S, K, B])

so the S seeds share one compilation and one device loop. Seed s draws its
initial parameters from `learner.init_key(s)`, its rollouts from
`learner.rollout_key(s)` and its batches from `QuerySampler(..., seed=s)`,
exactly as a single run with `config.seed = s`; evaluation, best-step
selection (the highest `config.best_metric` on validation, the earlier step on
ties, as `Checkpointer.best_step`) and the final metrics are computed per seed
with the single run's functions. Each seed's result therefore equals
`train_and_evaluate` with that seed up to float rounding of the vmapped
(batched) matrix products (tests/seeds_test.py).

What it does not do, compared with `train_and_evaluate`: no Orbax
checkpoints (the best parameters of each seed are kept in host memory), no
resume inside a run, no TensorBoard files, no outcome model for
`Router.load`, one device, logged data only (`config.environment='logged'`).
With `workdirs`, each seed's `metrics.jsonl` and `final_metrics.json` are
written once, when all seeds have finished; an interrupted call leaves no
partial record, and the caller reruns it (`experiments.compare` resumes at
the granularity of one such call: a method and input variant).
"""

from __future__ import annotations

import json
import os
import time
from typing import Sequence

from absl import logging
import jax
from jax.sharding import NamedSharding, PartitionSpec
import ml_collections
import numpy as np

from recal_jax import metrics_writer
from recal_jax import policies
from recal_jax import rollout as rollout_lib
from recal_jax.data import table as table_lib
from recal_jax.training import evaluation
from recal_jax.training import learner
from recal_jax.training import loop
from recal_jax.training.errors import ConfigError, NonFiniteError


class _SeedRecord:
  """One seed's host-side bookkeeping: metrics records, logging window, best step."""

  def __init__(self, seed: int):
    self.seed = seed
    self.records: list[dict] = []
    self.window: list[dict[str, np.ndarray]] = []
    self.last_logged: dict[str, float] = {}
    self.initial: dict[str, float] = {}
    self.best: tuple[float, int] | None = None  # (metric, step)
    self.best_params = None

  def write(self, step: int, scalars: dict[str, float]) -> None:
    self.records.append(metrics_writer.record(step, scalars))

  def offer(self, step: int, value: float, params) -> None:
    """Keeps `params` if `value` beats the best so far (ties keep the earlier step)."""
    if self.best is None or value > self.best[0]:
      self.best = (value, step)
      self.best_params = jax.device_get(params)


def _seed_slice(tree, index: int):
  return jax.tree.map(lambda x: x[index], tree)


def train_seeds(config: ml_collections.ConfigDict, seeds: Sequence[int], *,
                table: table_lib.RoutingTable | None = None,
                workdirs: Sequence[str] | None = None) -> list[dict]:
  """Trains one router per seed in one compiled program; their final metrics.

  Args:
    config: the run's config; `config.seed` is ignored (`seeds` replaces it)
      and the run uses one device whatever `config.num_devices` says.
    seeds: the seeds, e.g. `range(3)`; distinct.
    table: use this routing table instead of loading `config.data`.
    workdirs: optional, one per seed: each gets `metrics.jsonl` (the records
      `train_and_evaluate` writes) and `final_metrics.json` at the end.

  Returns:
    One dict per seed, in the order of `seeds`, with the keys of
    `train_and_evaluate`'s result, plus 'seconds/compile' (compiling the
    chunk program) and 'seconds/total' (this call), shared by the seeds,
    and 'best_params' (the seed's parameters at its best step, host arrays;
    not written to `final_metrics.json`).

  Raises:
    ConfigError: a config value the loop cannot run with, no seeds, repeated
      seeds, `workdirs` not one per seed, or a live environment.
    NonFiniteError: a statistic of one seed became NaN / inf (names the seed).
  """
  started = time.perf_counter()
  seeds = [int(s) for s in seeds]
  if not seeds or len(set(seeds)) != len(seeds):
    raise ConfigError(f"train_seeds: seeds must be distinct and non-empty, got {seeds}")
  if workdirs is not None and len(workdirs) != len(seeds):
    raise ConfigError(f"train_seeds: {len(workdirs)} workdirs for {len(seeds)} seeds")
  if config.environment != "logged":
    raise ConfigError(f"train_seeds runs logged data only (config.environment='logged'), "
                      f"got {config.environment!r}")
  if table is None:
    table = loop.load_data(config)
  table.validate()
  splits = loop.split_tables(table)
  train_table, validation_table = splits["train"], splits["validation"]
  if validation_table.num_queries == 0:
    raise ConfigError(f"table {table.name!r} has no validation queries")
  loop.check_config(config, train_table.num_queries)

  mesh = learner.make_mesh(1)
  replicated = NamedSharding(mesh, PartitionSpec())
  policy = policies.make_policy(config.policy, table)
  method = loop.method_from_config(config)
  tx = learner.make_optimizer(config)
  device_train = rollout_lib.device_table(train_table, replicated)
  fns = learner.make_step_functions(policy, tx, method, config, table=device_train,
                                    num_datasets=table.num_datasets, mesh=mesh)
  logging.info("Training %d seeds of a %s router with %r on %s in one program",
               len(seeds), config.policy.kind, config.method, table.name)

  def init(key):
    return learner.init_state(policy, tx, key, feature_dim=table.feature_dim,
                              num_datasets=table.num_datasets)

  states = jax.jit(jax.vmap(init))(jax.numpy.stack([learner.init_key(s) for s in seeds]))
  rollout_keys = jax.numpy.stack([learner.rollout_key(s) for s in seeds])
  train_chunks = jax.jit(jax.vmap(fns.chunk_fn, in_axes=(0, None, 0, 0)), donate_argnums=0)
  compiled, compile_seconds = {}, 0.0  # chunk length -> executable

  def run_chunk(states, indices):
    nonlocal compile_seconds
    if indices.shape[1] not in compiled:  # timed apart from training
      start = time.perf_counter()
      compiled[indices.shape[1]] = train_chunks.lower(
          states, device_train, rollout_keys, indices).compile()
      compile_seconds += time.perf_counter() - start
    return compiled[indices.shape[1]](states, device_train, rollout_keys, indices)

  samplers = [learner.QuerySampler(train_table.num_queries, int(config.batch_size), s)
              for s in seeds]
  evaluate_validation = evaluation.Evaluator(validation_table, fns.greedy_step, method,
                                             config.cost_scale, replicated)
  records = [_SeedRecord(s) for s in seeds]

  def run_evaluation(step: int) -> None:
    for index, record in enumerate(records):
      params = _seed_slice(states.params, index)
      scalars = evaluation.summarize(evaluate_validation(params), "validation")
      record.write(step, scalars)
      if config.best_metric not in scalars:
        raise ConfigError(f"config.best_metric={config.best_metric!r} is not an evaluation "
                          f"statistic; one of {sorted(scalars)}")
      record.offer(step, float(scalars[config.best_metric]), params)
      if step == 0:
        record.initial = {f"initial/{k}": v for k, v in scalars.items()}

  num_steps = int(config.num_train_steps)
  run_evaluation(0)
  step, window_start = 0, time.perf_counter()
  while step < num_steps:
    length = loop.next_boundary(step, config) - step
    indices = np.stack([sampler.chunk(step, length) for sampler in samplers])
    states, metrics = run_chunk(states, indices)
    metrics = jax.device_get(metrics)  # {name: [S, K]}
    for index, record in enumerate(records):
      seed_metrics = {name: v[index] for name, v in metrics.items()}
      for k in range(length):
        try:
          loop.check_finite(step + k + 1, {name: v[k] for name, v in seed_metrics.items()})
        except NonFiniteError as error:
          raise NonFiniteError(f"seed {record.seed}: {error}") from None
      record.window.append(seed_metrics)
    step += length
    if step % config.log_every_steps == 0 or step == num_steps:
      seconds = time.perf_counter() - window_start
      for record in records:
        record.last_logged = loop.window_means(record.window, seconds)
        record.write(step, record.last_logged)
        record.window = []
      window_start = time.perf_counter()
    if step % config.eval_every_steps == 0 or step == num_steps:
      run_evaluation(step)

  results = []
  for index, record in enumerate(records):
    result = dict(record.initial)
    result.update(evaluation.final_metrics(
        splits, fns.greedy_step, method, config, step=step,
        last_params=_seed_slice(states.params, index), best_step=record.best[1],
        best_params=record.best_params, sharding=replicated))
    result.update(record.last_logged)
    record.write(step, {k: v for k, v in result.items()
                        if k.startswith(("router/", "best_single/", "oracle/"))})
    results.append(result)
  for result in results:
    result.update({"seconds/compile": compile_seconds,
                   "seconds/total": time.perf_counter() - started})
  if workdirs is not None:
    for workdir, record, result in zip(workdirs, records, results):
      _write_run(workdir, record.records, result)
  for record, result in zip(records, results):
    result["best_params"] = record.best_params
  return results


def _write_run(workdir: str, records: list[dict], result: dict) -> None:
  """`metrics.jsonl` and `final_metrics.json` of one seed, each replaced whole."""
  os.makedirs(workdir, exist_ok=True)
  for name, text in (
      ("metrics.jsonl", "".join(json.dumps(r) + "\n" for r in records)),
      ("final_metrics.json", json.dumps(result, indent=2, sort_keys=True))):
    path = os.path.join(workdir, name)
    with open(path + ".tmp", "w") as f:
      f.write(text)
    os.replace(path + ".tmp", path)
