"""Training a router with RL on logged (or live) routing outcomes.

`train_and_evaluate(config, workdir)` is the whole run (see
`experiments/configs/default.py` for every config field):

  1. load the routing table, build the policy (`policies.make_policy`), the
     method (`advantage.method_config(config.method)`) and the optimiser
     (gradient clipping by global norm, then Adam);
  2. restore the latest checkpoint of `workdir` if there is one, otherwise
     initialise;
  3. for each step: pick B training queries (a seeded permutation per epoch,
     a pure function of the step), and run the jitted `train_step`:

       rng       = fold_in(rollout_key, step)       # resumed runs draw the same
       rollout   = sample G routes per query, look up outcomes, components
       adv       = recal_advantages(components, group_ids, ...)   # stage 1 + 2
       loss      = policy_loss(log_probs, old_log_probs, adv, token_mask,
                               sample_weights=adv.weights,
                               normalizer=global_normalizer(...))
       params    = Adam(clip(grad loss))

     then block on the step's metrics, stop on a non-finite statistic, log,
     evaluate greedy routes on the validation split, checkpoint;
  4. evaluate the best-on-validation checkpoint on validation and test next to
     the best single arm (chosen on train) and the per-query oracle.

Faults (tests/reliability_test.py):

  * killed (SIGKILL, OOM, node loss): rerunning with the same workdir resumes
    from the newest complete checkpoint and ends with bitwise the same
    parameters as an uninterrupted run (batches and rollout keys are pure
    functions of the step); the steps since that checkpoint are recomputed.
  * preempted (SIGTERM): the step in flight finishes, a checkpoint of it is
    saved, and `Preempted` is raised (`experiments/train.py` exits with
    `PREEMPTED_EXIT_CODE`); rerunning resumes from that step.
  * a NaN / inf loss, gradient or statistic, or a rollout whose reward is not
    finite: `NonFiniteError` naming the step and the statistic; the bad state
    is never saved, so the newest checkpoint is the last good one.

Data parallelism: the devices form a 1-D mesh with axis 'data'. The batch
(queries and rollouts) is sharded over it with `NamedSharding`, the state and
the table are replicated, and the step is one `jit` program (GSPMD). Every
statistic (group and dataset statistics, the loss normaliser Z) is computed
on the global batch, so the loss, the gradient and the new parameters do not
depend on the number of devices. Each step's metrics are fetched before the
next step is dispatched (a long queue of multi-device steps can deadlock the
CPU backend with fake devices; it costs nothing measurable on one device).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import signal
import threading
import time
from typing import Any, Callable, Mapping

from absl import logging
import flax
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec
import ml_collections
import numpy as np
import optax

from recal_jax import advantage
from recal_jax import calibration
from recal_jax import checkpointing
from recal_jax import evaluate
from recal_jax import losses
from recal_jax import metrics_writer
from recal_jax import outcome_model as outcome_lib
from recal_jax import policies
from recal_jax import rewards as rewards_lib
from recal_jax import rollout as rollout_lib
from recal_jax.data import table as table_lib

Params = Any
DATA_AXIS = "data"


class NonFiniteError(FloatingPointError):
  """A training statistic became NaN or infinite; names the step and statistic."""


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


class _PreemptionWatcher:
  """Records `PREEMPTION_SIGNALS` while active; restores the old handlers.

  The handler only records the signal (nothing else is safe in a signal
  handler); the training loop polls `signal_name` between steps. Signal
  handlers can only be set from the main thread: elsewhere the watcher does
  nothing and the signals keep their default action.
  """

  def __init__(self):
    self.signal_name: str | None = None
    self._previous = {}

  def _record(self, signum, frame):
    del frame
    if self.signal_name is None:
      self.signal_name = signal.Signals(signum).name

  def __enter__(self):
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


class TrainState(flax.struct.PyTreeNode):
  """Everything that changes during training (and is checkpointed).

  step:          [] int32, number of updates done
  params:        policy parameters
  opt_state:     optax state
  dataset_stats: running per-dataset advantage statistics (ReCal stage 2,
                 used when `dataset_norm='running'`), arrays [num_datasets]
  ref_params:    parameters of the reference policy for the KL penalty (the
                 initial policy)
  """
  step: jax.Array
  params: Params
  opt_state: optax.OptState
  dataset_stats: calibration.RunningDatasetStats
  ref_params: Params


# -------------------------------------------------------------- building
def load_data(config: ml_collections.ConfigDict) -> table_lib.RoutingTable:
  """The routing table named by `config.data`."""
  from recal_jax import data as data_lib  # pylint: disable=import-outside-toplevel
  data = config.data
  kwargs = {}
  if data.name == "synthetic":
    kwargs = dict(num_queries=int(data.num_queries), feature_dim=int(data.feature_dim))
  return data_lib.load_table(
      data.name, featurizer=data.featurizer or None,
      manual_dir=data.manual_dir or None, seed=int(data.seed), **kwargs)


def method_from_config(config: ml_collections.ConfigDict) -> advantage.ReCalConfig:
  """`method_config(config.method)` with `config.method_overrides` (JSON) applied."""
  overrides = config.get("method_overrides", "") or "{}"
  overrides = json.loads(overrides) if isinstance(overrides, str) else dict(overrides)
  overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
  # Weights are by component name: a JSON object, e.g. {"cost": 0.2}.
  return advantage.method_config(config.method, **overrides)


def loss_mode(config: ml_collections.ConfigDict) -> str:
  """`config.loss.mode`; 'auto' is Dr. GRPO's constant normaliser for 'dr_grpo'."""
  mode = config.loss.mode
  if mode == "auto":
    return "seq-mean-token-sum-norm" if config.method == "dr_grpo" else "token-mean"
  return mode


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """Global-norm clipping, then Adam(W) with linear warm-up then constant / cosine."""
  if config.lr_schedule == "cosine":
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, config.learning_rate, max(config.warmup_steps, 1),
        max(config.num_train_steps, config.warmup_steps + 1),
        end_value=config.learning_rate * 0.1)
  elif config.lr_schedule == "constant":
    schedule = optax.join_schedules(
        [optax.linear_schedule(0.0, config.learning_rate, max(config.warmup_steps, 1)),
         optax.constant_schedule(config.learning_rate)], [config.warmup_steps])
  else:
    raise ValueError(f"lr_schedule must be 'constant' or 'cosine', got {config.lr_schedule!r}")
  return optax.chain(
      optax.clip_by_global_norm(config.max_grad_norm),
      optax.adamw(schedule, b1=config.adam_b1, b2=config.adam_b2,
                  eps=config.adam_eps, weight_decay=config.weight_decay))


def make_mesh(num_devices: int = 0) -> Mesh:
  """A 1-D mesh over the first `num_devices` devices (0: all), axis 'data'."""
  devices = jax.devices()
  if num_devices:
    if num_devices > len(devices):
      raise ValueError(f"config.num_devices={num_devices} but only "
                       f"{len(devices)} devices are visible")
    devices = devices[:num_devices]
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def init_state(policy: policies.RouterPolicy, tx: optax.GradientTransformation,
               rng: jax.Array, feature_dim: int, num_datasets: int) -> TrainState:
  params = policy.init(rng, feature_dim)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state=tx.init(params),
                    dataset_stats=calibration.init_dataset_stats(num_datasets),
                    ref_params=params)


class QuerySampler:
  """B query indices per step: epochs of seeded permutations of the queries.

  `indices(step)` is a pure function of (seed, step), so a resumed run sees
  the same batches. Positions `step * B ... step * B + B - 1` of the infinite
  stream `perm_0, perm_1, ...` with `perm_e = permutation_{seed, e}(Q)`.
  """

  def __init__(self, num_queries: int, batch_size: int, seed: int):
    if num_queries < 1:
      raise ValueError("the training split has no queries")
    self.num_queries = num_queries
    self.batch_size = batch_size
    self.seed = seed

  def _permutation(self, epoch: int) -> np.ndarray:
    return np.random.default_rng([self.seed, epoch]).permutation(self.num_queries)

  def indices(self, step: int) -> np.ndarray:
    positions = step * self.batch_size + np.arange(self.batch_size)
    epochs, offsets = np.divmod(positions, self.num_queries)
    out = np.empty(self.batch_size, np.int32)
    for epoch in np.unique(epochs):
      rows = epochs == epoch
      out[rows] = self._permutation(int(epoch))[offsets[rows]]
    return out


# ------------------------------------------------------------------ step
def _scalar_diagnostics(diagnostics: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
  """ReCal diagnostics -> scalars; per-component vectors get component names."""
  out = {}
  for name, value in diagnostics.items():
    value = jnp.asarray(value, jnp.float32)
    if value.ndim == 0:
      out[f"advantage/{name}"] = value
    elif value.shape == (rewards_lib.NUM_COMPONENTS,):
      for k, component in enumerate(rewards_lib.COMPONENTS):
        out[f"advantage/{name}/{component}"] = value[k]
  return out


def _masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
  mask = mask.astype(jnp.float32)
  return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def make_learn_fn(policy: policies.RouterPolicy, tx: optax.GradientTransformation,
                  method: advantage.ReCalConfig, config: ml_collections.ConfigDict,
                  *, num_queries_per_batch: int, num_datasets: int
                  ) -> Callable[[TrainState, rollout_lib.Rollout],
                                tuple[TrainState, dict[str, jax.Array]]]:
  """`learn(state, rollout) -> (state, metrics)`: advantages, loss, update.

  The rollout is one batch of N = B * G rows. `config.num_updates_per_batch`
  gradient steps are taken on it (PPO-style reuse; the clipping of the
  surrogate keeps them close to the behaviour policy); with 1 the update is
  on-policy and the importance ratio is 1.
  """
  mode = loss_mode(config)
  loss_config = config.loss
  kl_coef = float(loss_config.kl_coef)
  entropy_coef = float(loss_config.entropy_coef)
  dual_clip = loss_config.dual_clip if loss_config.dual_clip else None

  def learn(state: TrainState, rollout: rollout_lib.Rollout):
    recal = advantage.recal_advantages(
        rollout.components, rollout.group_ids, num_queries_per_batch,
        rollout.dataset_ids, num_datasets, rollout.mask, config=method,
        dataset_state=state.dataset_stats, group_size=int(config.group_size))
    token_mask = rollout.token_mask & rollout.mask[:, None]
    normalizer = losses.global_normalizer(token_mask, mode, recal.weights)
    ref_log_probs = None
    if kl_coef:
      ref_log_probs, _ = policy.log_probs_and_entropy(
          state.ref_params, rollout.features, rollout.tokens)
      ref_log_probs = jax.lax.stop_gradient(ref_log_probs)

    def loss_fn(params):
      log_probs, entropy = policy.log_probs_and_entropy(
          params, rollout.features, rollout.tokens)
      return losses.policy_loss(
          log_probs, rollout.old_log_probs, recal.advantages, token_mask,
          ref_log_probs=ref_log_probs, sample_weights=recal.weights,
          eps_low=loss_config.eps_low, eps_high=loss_config.eps_high,
          dual_clip=dual_clip, kl_coef=kl_coef,
          kl_estimator=loss_config.kl_estimator,
          entropy=entropy, entropy_coef=entropy_coef,
          mode=mode, normalizer=normalizer)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    params, opt_state = state.params, state.opt_state
    for _ in range(config.num_updates_per_batch):
      (_, loss_metrics), grads = grad_fn(params)
      grad_norm = optax.tree.norm(grads)
      updates, opt_state = tx.update(grads, opt_state, params)
      params = optax.apply_updates(params, updates)

    mask = rollout.mask
    metrics = {f"loss/{k}": v for k, v in loss_metrics.items()}
    metrics.update(_scalar_diagnostics(recal.diagnostics))
    metrics.update({
        "grad_norm": grad_norm,
        "param_norm": optax.tree.norm(params),
        "rollout/format_ok": _masked_mean(rollout.format_ok, mask),
        "rollout/accuracy": _masked_mean(rollout.score, mask),
        "rollout/cost_usd": _masked_mean(rollout.cost, mask),
        "rollout/malformed_rate": jnp.mean((rollout.arm_indices < 0).astype(jnp.float32)),
        "rollout/unlogged_rate": 1.0 - jnp.mean(mask.astype(jnp.float32)),
        "rollout/reward": _masked_mean(
            rewards_lib.summed_reward(rollout.components, method.weight_vector()), mask),
        "advantage/mean": _masked_mean(recal.advantages, mask),
        "advantage/abs_mean": _masked_mean(jnp.abs(recal.advantages), mask),
        "advantage/weight_max": jnp.max(jnp.where(mask, recal.weights, 0.0)),
    })
    new_state = state.replace(
        step=state.step + 1, params=params, opt_state=opt_state,
        dataset_stats=(recal.dataset_state if recal.dataset_state is not None
                       else state.dataset_stats))
    return new_state, metrics

  return learn


@dataclasses.dataclass
class StepFunctions:
  """The jitted functions of a run, bound to its policy, table and mesh."""
  train_step: Callable  # (state, query_indices [B]) -> (state, metrics), fused
  sample_step: Callable  # (params, features [B, D], rng) -> Routes [B * G]
  assemble_step: Callable  # (routes, queries, features, datasets, outcomes) -> Rollout
  learn_step: Callable  # (state, rollout) -> (state, metrics)
  greedy_step: Callable  # (params, features [Q, D]) -> arm indices [Q]
  rollout_key: jax.Array
  batch_sharding: NamedSharding
  replicated: NamedSharding


def make_step_functions(policy, tx, method, config, *, table: rollout_lib.DeviceTable,
                        num_datasets: int, mesh: Mesh) -> StepFunctions:
  """Builds the jitted train / sample / learn / greedy functions."""
  batch_size, group_size = int(config.batch_size), int(config.group_size)
  cost_scale = float(config.cost_scale)
  replicated = NamedSharding(mesh, PartitionSpec())
  batch_sharding = NamedSharding(mesh, PartitionSpec(DATA_AXIS))
  rollout_key = jax.random.fold_in(jax.random.key(config.seed), 1)
  learn = make_learn_fn(policy, tx, method, config,
                        num_queries_per_batch=batch_size, num_datasets=num_datasets)

  def shard_batch(tree):
    return jax.tree.map(
        lambda x: jax.lax.with_sharding_constraint(x, batch_sharding), tree)

  # The table is an argument, not a closed-over constant: constants are
  # embedded in the compiled program (slow to compile for large tables).
  def train_step(state: TrainState, device_table: rollout_lib.DeviceTable,
                 query_indices: jax.Array):
    rng = jax.random.fold_in(rollout_key, state.step)
    batch = rollout_lib.sample_rollouts(
        policy, state.params, device_table, query_indices, rng,
        group_size=group_size, cost_scale=cost_scale)
    return learn(state, shard_batch(batch))

  jitted_train_step = jax.jit(train_step, donate_argnums=0,
                              out_shardings=(replicated, replicated))

  def learn_step(state, batch):
    return learn(state, shard_batch(batch))

  state_and_metrics = (replicated, replicated)
  return StepFunctions(
      train_step=lambda state, query_indices: jitted_train_step(state, table, query_indices),
      sample_step=jax.jit(lambda params, features, rng: rollout_lib.sample_routes(
          policy, params, features, rng, group_size)),
      assemble_step=jax.jit(functools.partial(
          rollout_lib.assemble_rollout, group_size=group_size, cost_scale=cost_scale)),
      learn_step=jax.jit(learn_step, donate_argnums=0, out_shardings=state_and_metrics),
      greedy_step=jax.jit(lambda params, features: policy.greedy(params, features).arm_indices),
      rollout_key=rollout_key, batch_sharding=batch_sharding, replicated=replicated)


def global_batch(indices: np.ndarray, sharding: NamedSharding) -> jax.Array:
  """A global [B] array sharded over 'data' from the same indices on every host."""
  return jax.make_array_from_callback(indices.shape, sharding, lambda index: indices[index])


# ----------------------------------------------------------- evaluation
def routing_metrics(table: table_lib.RoutingTable, choices: np.ndarray) -> dict:
  """`evaluate.route_metrics`, extended to malformed routes (choice -1).

  A malformed route calls no model: it scores 0, costs 0 and fails the format.
  Adds `malformed_rate`. With no malformed route this is exactly
  `evaluate.route_metrics` (plus `malformed_rate = 0`).
  """
  choices = np.asarray(choices).astype(np.int64)
  well_formed = choices >= 0
  if well_formed.all():
    return dict(evaluate.route_metrics(table, choices), malformed_rate=0.0)
  num_queries = table.num_queries
  fraction = well_formed.mean()
  per_dataset = {}
  part = (evaluate.route_metrics(table.take(well_formed), choices[well_formed])
          if well_formed.any() else None)
  for d, name in enumerate(table.dataset_names):
    rows = table.dataset_ids == d
    if not rows.any():
      continue
    inside = part["per_dataset"].get(name) if part else None
    share = (inside["num_queries"] / rows.sum()) if inside else 0.0
    per_dataset[name] = {
        "accuracy": inside["accuracy"] * share if inside else 0.0,
        "cost": inside["cost"] * share if inside else 0.0,
        "num_queries": int(rows.sum())}
  counts = np.bincount(choices[well_formed], minlength=table.num_arms)
  return {
      "num_queries": num_queries,
      "accuracy": part["accuracy"] * fraction if part else 0.0,
      "cost": part["cost"] * fraction if part else 0.0,
      "macro_accuracy": float(np.mean([v["accuracy"] for v in per_dataset.values()])),
      "macro_cost": float(np.mean([v["cost"] for v in per_dataset.values()])),
      "format_ok_rate": part["format_ok_rate"] * fraction if part else 0.0,
      "unlogged_choices": part["unlogged_choices"] if part else 0,
      "per_dataset": per_dataset,
      "arm_distribution": {name: float(n) / num_queries
                           for name, n in zip(table.arm_names, counts)},
      "malformed_rate": float(1.0 - fraction),
  }


def validation_reward(metrics: Mapping[str, float], method: advantage.ReCalConfig,
                      cost_scale: float) -> float:
  """The summed reward of greedy routes, averaged over queries.

    reward = w_format * format_ok_rate + w_correct * accuracy
             - w_cost * cost / cost_scale

  with the method's `component_weights` (the training reward's units).
  """
  w_format, w_correct, w_cost = method.weight_vector()
  return float(w_format * metrics["format_ok_rate"] + w_correct * metrics["accuracy"]
               - w_cost * metrics["cost"] / cost_scale)


def summarize(metrics: Mapping, prefix: str) -> dict[str, float]:
  """Scalars of `routing_metrics` worth logging every evaluation."""
  keys = ("accuracy", "cost", "macro_accuracy", "macro_cost", "format_ok_rate",
          "malformed_rate", "reward")
  out = {f"{prefix}/{k}": float(metrics[k]) for k in keys if k in metrics}
  for name, values in metrics.get("per_dataset", {}).items():
    out[f"{prefix}/per_dataset/{name}/accuracy"] = float(values["accuracy"])
    out[f"{prefix}/per_dataset/{name}/cost"] = float(values["cost"])
  return out


class Evaluator:
  """Greedy routes of a policy on one split -> `routing_metrics` (+ reward)."""

  def __init__(self, table: table_lib.RoutingTable, greedy_step: Callable,
               method: advantage.ReCalConfig, cost_scale: float,
               sharding: NamedSharding):
    self.table = table
    self.greedy_step = greedy_step
    self.method = method
    self.cost_scale = cost_scale
    self.features = jax.device_put(np.asarray(table.features, np.float32), sharding)

  def __call__(self, params) -> dict:
    choices = np.asarray(jax.device_get(self.greedy_step(params, self.features)))
    metrics = routing_metrics(self.table, choices)
    metrics["reward"] = validation_reward(metrics, self.method, self.cost_scale)
    return metrics


def reference_metrics(train: table_lib.RoutingTable,
                      splits: Mapping[str, table_lib.RoutingTable]) -> dict:
  """Best single arm (chosen on train) and per-query oracle on each split."""
  best_arm = evaluate.best_single_arm(train)
  out = {"best_single_arm": train.arm_names[best_arm]}
  for split, table in splits.items():
    if table.num_queries == 0:
      continue
    single = evaluate.route_metrics(table, np.full(table.num_queries, best_arm))
    oracle = evaluate.route_metrics(table, evaluate.oracle_choices(table))
    for name, m in (("best_single", single), ("oracle", oracle)):
      out[f"{name}/{split}/accuracy"] = m["accuracy"]
      out[f"{name}/{split}/cost"] = m["cost"]
  return out


def comparison_rows(final: Mapping[str, Any], splits=("validation", "test")) -> list[dict]:
  """Rows (router, best single arm, oracle) x (accuracy, cost) per split."""
  rows = []
  names = (("router", "trained router"),
           ("best_single", f"best single arm ({final.get('best_single_arm', '?')})"),
           ("oracle", "per-query oracle"))
  for key, label in names:
    row = {"policy": label}
    for split in splits:
      for stat in ("accuracy", "cost"):
        value = final.get(f"{key}/{split}/{stat}")
        if value is not None:
          row[f"{split} {stat}" + (" (USD)" if stat == "cost" else "")] = value
    rows.append(row)
  return rows


# ------------------------------------------------------------------- run
_DISTRIBUTED_INITIALIZED = False


def maybe_initialize_distributed(config: ml_collections.ConfigDict) -> None:
  """`jax.distributed.initialize()` once, when `config.distributed` is set.

  On a TPU pod slice or a SLURM / Open MPI cluster the coordinator address,
  process count and id are discovered from the environment; elsewhere set
  them through `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES` and
  `JAX_PROCESS_ID`. Must run before anything touches a device.
  """
  global _DISTRIBUTED_INITIALIZED
  if config.get("distributed", False) and not _DISTRIBUTED_INITIALIZED:
    jax.distributed.initialize()
    _DISTRIBUTED_INITIALIZED = True
    logging.info("jax.distributed initialized: process %d of %d, %d global devices",
                 jax.process_index(), jax.process_count(), jax.device_count())


def _check_finite(step: int, metrics: Mapping[str, float]) -> None:
  """Raises `NonFiniteError` naming the step and the first bad statistic.

  Also for rollouts whose reward is NaN / inf (`advantage/invalid_rows` > 0):
  the advantage functions drop such rows inside `jit`, which must not pass
  silently in training.
  """
  order = ["loss/loss", "grad_norm", "param_norm"] + sorted(metrics)
  for name in order:
    value = metrics.get(name)
    if value is not None and not math.isfinite(float(value)):
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


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       *, table: table_lib.RoutingTable | None = None,
                       environment: rollout_lib.LiveEnvironment | None = None) -> dict:
  """Trains a router; returns the final metrics (see `comparison_rows`).

  Args:
    config: the run's config (`experiments/configs/default.py` documents it).
    workdir: where checkpoints, metrics and TensorBoard files go. If it holds
      checkpoints, training resumes from the latest one.
    table: use this routing table instead of loading `config.data`.
    environment: with `config.environment == 'live'`, the `LiveEnvironment`
      answering routes (default: `LoggedEnvironment` over the training split,
      which reproduces the fused in-jit lookup exactly).

  Returns:
    A flat dict: 'step', 'best_step', 'final/<split>/<stat>' (last params),
    'router/<split>/<stat>' (best-on-validation params),
    'best_single/<split>/<stat>', 'oracle/<split>/<stat>', 'best_single_arm',
    'initial/validation/<stat>', and 'train/<name>' (last logged means).

  Raises:
    NonFiniteError: a loss, gradient or other statistic became NaN / inf.
    Preempted: SIGTERM arrived; the current step was checkpointed first.
    table_lib.RoutingDataError: `table` is malformed (e.g. a NaN outcome).
    checkpointing.CheckpointError: `workdir` holds checkpoints, none readable.
  """
  maybe_initialize_distributed(config)
  workdir = os.path.abspath(os.path.expanduser(workdir))
  is_chief = jax.process_index() == 0
  if table is None:
    table = load_data(config)
  table.validate()  # loaders validate; a table passed in may not have been
  splits = split_tables(table)
  train_table, validation_table = splits["train"], splits["validation"]
  if validation_table.num_queries == 0:
    raise ValueError(f"table {table.name!r} has no validation queries")

  mesh = make_mesh(int(config.num_devices))
  num_devices = mesh.devices.size
  if config.batch_size % num_devices:
    raise ValueError(f"config.batch_size={config.batch_size} must be divisible by "
                     f"the {num_devices} devices of the 'data' mesh axis")
  policy = policies.make_policy(config.policy, table)
  method = method_from_config(config)
  tx = make_optimizer(config)
  replicated = NamedSharding(mesh, PartitionSpec())
  device_train = rollout_lib.device_table(train_table, replicated)
  fns = make_step_functions(policy, tx, method, config, table=device_train,
                            num_datasets=table.num_datasets, mesh=mesh)
  logging.info("Training %s router with method %r on %s: %d train / %d validation "
               "queries, %d arms, %d datasets, %d device(s)", config.policy.kind,
               config.method, table.name, train_table.num_queries,
               validation_table.num_queries, table.num_arms, table.num_datasets,
               num_devices)

  init_fn = jax.jit(functools.partial(
      init_state, policy, tx, feature_dim=table.feature_dim,
      num_datasets=table.num_datasets), out_shardings=replicated)
  state = init_fn(jax.random.fold_in(jax.random.key(config.seed), 0))

  description = table.describe()
  checkpointer = checkpointing.Checkpointer(
      workdir, max_to_keep=int(config.max_checkpoints_to_keep),
      config_json=json.loads(config.to_json_best_effort()),
      table_description=description, cleanup_partial_saves=True)
  saved_table = checkpointer.saved_table()
  if saved_table is not None and saved_table.get("fingerprint") != description["fingerprint"]:
    raise ValueError(
        f"{workdir} holds checkpoints trained on table fingerprint "
        f"{saved_table.get('fingerprint')}, but this run's table is "
        f"{description['fingerprint']}; use a fresh workdir")
  checkpointer.write_descriptions()
  if is_chief and not os.path.exists(os.path.join(workdir, outcome_lib.FILENAME)):
    # Expected score / cost per arm for routing new queries (recal_jax.router).
    outcome_lib.fit(train_table).save(workdir)
  restored = checkpointer.restore_latest(state)
  if restored is not None:
    state = restored
  initial_step = int(jax.device_get(state.step))
  best = checkpointer.best_record()

  writer = metrics_writer.MetricsWriter(workdir, enabled=is_chief)
  evaluate_validation = Evaluator(validation_table, fns.greedy_step, method,
                                  config.cost_scale, replicated)
  sampler = QuerySampler(train_table.num_queries, int(config.batch_size),
                         int(config.seed))
  live_env = None
  if config.environment == "live":
    live_env = environment or rollout_lib.LoggedEnvironment(train_table)
  elif config.environment != "logged":
    raise ValueError(f"config.environment must be 'logged' or 'live', got "
                     f"{config.environment!r}")

  result: dict[str, Any] = {}
  num_steps = int(config.num_train_steps)

  def run_evaluation(step: int, state: TrainState) -> dict:
    nonlocal best
    metrics = evaluate_validation(state.params)
    scalars = summarize(metrics, "validation")
    writer.write_scalars(step, scalars)
    if config.best_metric not in scalars:
      raise ValueError(f"config.best_metric={config.best_metric!r} is not an "
                       f"evaluation statistic; choose from {sorted(scalars)}")
    value = scalars[config.best_metric]
    if best is None or value > best["value"]:
      checkpointer.save_best(step, state, config.best_metric, value, scalars)
      best = checkpointer.best_record()
    return scalars

  progress = metrics_writer.ProgressBar(num_steps, initial_step, enabled=(
      None if is_chief else False))
  window: list[dict[str, float]] = []
  window_start = time.perf_counter()
  last_logged = {}
  step = initial_step
  # From here on SIGTERM is recorded, not fatal: the loop checkpoints and
  # raises `Preempted` before the next step.
  watcher = _PreemptionWatcher().__enter__()
  try:
    if initial_step == 0:
      result.update({f"initial/{k}": v for k, v in run_evaluation(0, state).items()})
      checkpointer.save(0, state)
    else:
      logging.info("Resumed from step %d", initial_step)
    while step < num_steps:
      if watcher.signal_name is not None:
        checkpointer.save(step, state)
        logging.warning("Preempted by %s at step %d: saved checkpoint %d in %s; "
                        "rerun with the same workdir to resume", watcher.signal_name,
                        step, step, workdir)
        raise Preempted(step, watcher.signal_name, workdir)
      query_indices = global_batch(sampler.indices(step), fns.batch_sharding)
      if live_env is None:
        state, metrics = fns.train_step(state, query_indices)
      else:
        rng = jax.random.fold_in(fns.rollout_key, step)
        batch = rollout_lib.collect_rollouts(
            policy, state.params, device_train, query_indices, rng, live_env,
            group_size=int(config.group_size), cost_scale=float(config.cost_scale),
            sample_fn=fns.sample_step, assemble_fn=fns.assemble_step)
        state, metrics = fns.learn_step(state, batch)
      # Blocking here keeps at most one step in flight (see module docstring).
      metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
      step += 1
      _check_finite(step, metrics)
      window.append(metrics)
      progress.update(step, f"reward {metrics['rollout/reward']:.3f}")

      if step % config.log_every_steps == 0 or step == num_steps:
        elapsed = time.perf_counter() - window_start
        means = {f"train/{k}": float(np.mean([m[k] for m in window])) for k in window[0]}
        means["train/steps_per_second"] = len(window) / max(elapsed, 1e-9)
        writer.write_scalars(step, means)
        last_logged = means
        window, window_start = [], time.perf_counter()
      if step % config.eval_every_steps == 0 or step == num_steps:
        run_evaluation(step, state)
      if step % config.checkpoint_every_steps == 0 or step == num_steps:
        checkpointer.save(step, state)
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

  # Final evaluation: last params and best-on-validation params.
  result["step"] = step
  result.update(last_logged)
  evaluators = {split: Evaluator(t, fns.greedy_step, method, config.cost_scale, replicated)
                for split, t in splits.items()
                if split != "train" and t.num_queries > 0}
  for split, evaluator in evaluators.items():
    final = evaluator(state.params)
    result.update({f"final/{k}": v for k, v in summarize(final, split).items()})
  best_state = checkpointer.restore_best(state)
  best = checkpointer.best_record()
  result["best_step"] = best["step"] if best else step
  best_params = best_state.params if best_state is not None else state.params
  for split, evaluator in evaluators.items():
    routed = evaluator(best_params)
    result.update({f"router/{k}": v for k, v in summarize(routed, split).items()})
  result.update(reference_metrics(train_table, {s: splits[s] for s in evaluators}))
  writer.write_scalars(step, {k: v for k, v in result.items()
                              if k.startswith(("router/", "best_single/", "oracle/"))})
  writer.close()
  checkpointer.close()
  if is_chief:
    with open(os.path.join(workdir, "final_metrics.json"), "w") as f:
      json.dump(result, f, indent=2, sort_keys=True)
  return result
