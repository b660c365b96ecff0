"""The learner: train state, optimiser, and the jitted step and chunk functions.

One step (logged data, all on the device):

  rng       = fold_in(rollout_key, state.step)     # resumed runs draw the same
  rollout   = sample G routes per query, look up outcomes, components
  adv       = recal_advantages(components, group_ids, ...)   # stage 1 + 2
  loss      = policy_loss(log_probs, old_log_probs, adv, token_mask,
                          sample_weights=adv.weights,
                          normalizer=global_normalizer(...))
  params    = Adam(clip(grad loss))       # `num_updates_per_batch` times, lax.scan

`train_chunk(state, query_indices [K, B])` runs K such steps under `lax.scan`
in one dispatch and returns the per-step metrics stacked [K]; the loop syncs
with the host only between chunks (logging, evaluation, checkpoint and
preemption boundaries). Each chunk is a single dispatch, so a multi-device
run never queues many cross-device programs (which can deadlock the CPU
backend with fake devices).

Data parallelism: the devices form a 1-D mesh with axis 'data'. The batch is
sharded over it with `NamedSharding`, the state and the table are replicated
and the step is one `jit` program (GSPMD). Every statistic (group and dataset
statistics, the loss normaliser Z) is computed on the global batch, so the
loss, the gradient and the new parameters do not depend on the device count.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping

import flax
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec
import ml_collections
import numpy as np
import optax

from recal_jax import advantage
from recal_jax import calibration
from recal_jax import losses
from recal_jax import policies
from recal_jax import rewards as rewards_lib
from recal_jax import rollout as rollout_lib

Params = Any
DATA_AXIS = "data"


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


def init_key(seed: int) -> jax.Array:
  """The key `init_state` draws a run's initial parameters from."""
  return jax.random.fold_in(jax.random.key(seed), 0)


def rollout_key(seed: int) -> jax.Array:
  """The key of a run's rollouts; step s samples with `fold_in(rollout_key, s)`."""
  return jax.random.fold_in(jax.random.key(seed), 1)


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

  def chunk(self, start: int, length: int) -> np.ndarray:
    """[length, B] indices of steps start ... start + length - 1."""
    return np.stack([self.indices(start + k) for k in range(length)])


def global_batch(indices: np.ndarray, sharding: NamedSharding) -> jax.Array:
  """A global array sharded by `sharding` from the same indices on every host."""
  return jax.make_array_from_callback(indices.shape, sharding, lambda index: indices[index])


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
  gradient steps are taken on it under `lax.scan` (PPO-style reuse; the
  clipping of the surrogate keeps them close to the behaviour policy); with 1
  the update is on-policy and the importance ratio is 1. The loss metrics and
  gradient norm reported are those of the last update.
  """
  mode = loss_mode(config)
  loss_config = config.loss
  kl_coef = float(loss_config.kl_coef)
  entropy_coef = float(loss_config.entropy_coef)
  dual_clip = loss_config.dual_clip if loss_config.dual_clip else None
  num_updates = int(config.num_updates_per_batch)
  group_size = int(config.group_size)
  if num_updates < 1:
    raise ValueError(f"config.num_updates_per_batch must be >= 1, got {num_updates}")

  def learn(state: TrainState, rollout: rollout_lib.Rollout):
    recal = advantage.recal_advantages(
        rollout.components, rollout.group_ids, num_queries_per_batch,
        rollout.dataset_ids, num_datasets, rollout.mask, config=method,
        dataset_state=state.dataset_stats, group_size=group_size)
    token_mask = rollout.token_mask & rollout.mask[:, None]
    normalizer = losses.global_normalizer(token_mask, mode, recal.weights)
    # Rollouts are query-major, G rows per query with the query's features:
    # the query network runs on the B queries once, not on the B * G rows.
    query_features = rollout.features.reshape(
        num_queries_per_batch, group_size, -1)[:, 0]
    ref_log_probs = None
    if kl_coef:
      ref_log_probs, _ = policy.log_probs_and_entropy(
          state.ref_params, query_features, rollout.tokens, repeats=group_size)
      ref_log_probs = jax.lax.stop_gradient(ref_log_probs)

    def loss_fn(params):
      log_probs, entropy = policy.log_probs_and_entropy(
          params, query_features, rollout.tokens, repeats=group_size)
      return losses.policy_loss(
          log_probs, rollout.old_log_probs, recal.advantages, token_mask,
          ref_log_probs=ref_log_probs, sample_weights=recal.weights,
          eps_low=loss_config.eps_low, eps_high=loss_config.eps_high,
          dual_clip=dual_clip, kl_coef=kl_coef,
          kl_estimator=loss_config.kl_estimator,
          entropy=entropy, entropy_coef=entropy_coef,
          mode=mode, normalizer=normalizer)

    def update(carry, _):
      params, opt_state = carry
      (_, loss_metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
      updates, opt_state = tx.update(grads, opt_state, params)
      params = optax.apply_updates(params, updates)
      return (params, opt_state), (loss_metrics, optax.tree.norm(grads))

    (params, opt_state), (loss_metrics, grad_norm) = jax.lax.scan(
        update, (state.params, state.opt_state), length=num_updates)
    loss_metrics, grad_norm = jax.tree.map(lambda x: x[-1], (loss_metrics, grad_norm))

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
  train_chunk: Callable  # (state, query_indices [K, B]) -> (state, metrics [K])
  # The chunk before `jit`, table and key as arguments (vmapped over seeds
  # by `training.seeds`): (state, device_table, key, query_indices [K, B]).
  chunk_fn: Callable
  sample_step: Callable  # (params, features [B, D], rng) -> Routes [B * G]
  assemble_step: Callable  # (routes, queries, features, datasets, outcomes) -> Rollout
  learn_step: Callable  # (state, rollout) -> (state, metrics)
  greedy_step: Callable  # (params, features [Q, D]) -> arm indices [Q]
  rollout_key: jax.Array
  batch_sharding: NamedSharding  # [B] query indices
  chunk_sharding: NamedSharding  # [K, B] query indices
  replicated: NamedSharding


def make_step_functions(policy, tx, method, config, *, table: rollout_lib.DeviceTable,
                        num_datasets: int, mesh: Mesh) -> StepFunctions:
  """Builds the jitted train / chunk / sample / learn / greedy functions."""
  batch_size, group_size = int(config.batch_size), int(config.group_size)
  cost_scale = float(config.cost_scale)
  replicated = NamedSharding(mesh, PartitionSpec())
  batch_sharding = NamedSharding(mesh, PartitionSpec(DATA_AXIS))
  run_rollout_key = rollout_key(int(config.seed))
  learn = make_learn_fn(policy, tx, method, config,
                        num_queries_per_batch=batch_size, num_datasets=num_datasets)

  def shard_batch(tree):
    return jax.tree.map(
        lambda x: jax.lax.with_sharding_constraint(x, batch_sharding), tree)

  # The table and the rollout key are arguments, not closed-over constants:
  # constants are embedded in the compiled program (slow to compile for large
  # tables), and runs that differ only in the seed share one program (hits of
  # a persistent compilation cache, e.g. the seeds of `experiments.compare`).
  def train_step(state: TrainState, device_table: rollout_lib.DeviceTable,
                 key: jax.Array, query_indices: jax.Array):
    rng = jax.random.fold_in(key, state.step)
    batch = rollout_lib.sample_rollouts(
        policy, state.params, device_table, query_indices, rng,
        group_size=group_size, cost_scale=cost_scale)
    return learn(state, shard_batch(batch))

  def train_chunk(state: TrainState, device_table: rollout_lib.DeviceTable,
                  key: jax.Array, query_indices: jax.Array):
    return jax.lax.scan(lambda state, indices: train_step(state, device_table, key, indices),
                        state, query_indices)

  state_and_metrics = (replicated, replicated)
  jitted_step = jax.jit(train_step, donate_argnums=0, out_shardings=state_and_metrics)
  jitted_chunk = jax.jit(train_chunk, donate_argnums=0, out_shardings=state_and_metrics)

  def learn_step(state, batch):
    return learn(state, shard_batch(batch))

  return StepFunctions(
      train_step=lambda state, query_indices: jitted_step(
          state, table, run_rollout_key, query_indices),
      train_chunk=lambda state, query_indices: jitted_chunk(
          state, table, run_rollout_key, query_indices),
      chunk_fn=train_chunk,
      sample_step=jax.jit(lambda params, features, rng: rollout_lib.sample_routes(
          policy, params, features, rng, group_size)),
      assemble_step=jax.jit(functools.partial(
          rollout_lib.assemble_rollout, group_size=group_size, cost_scale=cost_scale)),
      learn_step=jax.jit(learn_step, donate_argnums=0, out_shardings=state_and_metrics),
      greedy_step=jax.jit(lambda params, features: policy.greedy(params, features).arm_indices),
      rollout_key=run_rollout_key, batch_sharding=batch_sharding,
      chunk_sharding=NamedSharding(mesh, PartitionSpec(None, DATA_AXIS)),
      replicated=replicated)
