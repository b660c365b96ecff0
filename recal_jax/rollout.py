"""Rollouts: sample G routes per query and score them against outcomes.

A rollout batch for B queries holds N = B * G rollouts, query-major: rollout
`i = b * G + g` is the g-th route sampled for query b, so

  group_ids = repeat(arange(B), G)        one group per query.

Two ways to get the outcome of a route:

* Logged outcomes, inside `jit` (`sample_rollouts`): the table lives on the
  device as a `DeviceTable` and outcomes are gathered with `score[q, a]`. This
  is what training on logged data uses; sampling, lookup and the update are
  one compiled step.
* A live environment, outside `jit` (`collect_rollouts`): routes are sampled
  on the device, handed to a Python callback `env(query_indices,
  arm_indices) -> Outcomes` (which may call real LLMs, a cache, a simulator),
  and the answers are turned into the same `Rollout`. `LoggedEnvironment`
  implements the callback from a `RoutingTable`, and gives exactly the
  numbers of the in-`jit` lookup.

Outcome rules (the same on both paths):

  well-formed route, logged outcome   components from (format_ok, score, cost)
  malformed route (arm -1)            format 0, score 0, cost 0 (no model was
                                      called); the rollout counts (mask 1), so
                                      the format failure is learned from
  arm with no logged outcome          mask 0: left out of the advantage and
                                      the loss (we do not know what it earned)

Reward components are `rewards.routing_components(format_ok, score, cost,
cost_scale=...)`: columns (format, correctness, -cost / cost_scale).
"""

from __future__ import annotations

from typing import NamedTuple, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np

from recal_jax import policies
from recal_jax import rewards as rewards_lib
from recal_jax.data.table import RoutingTable


class DeviceTable(NamedTuple):
  """The arrays of a `RoutingTable` the rollout needs, as device arrays.

  features:     [Q, D] float32
  dataset_ids:  [Q] int32
  score:        [Q, A] float32
  format_ok:    [Q, A] float32
  cost:         [Q, A] float32 (USD)
  outcome_mask: [Q, A] bool
  """
  features: jax.Array
  dataset_ids: jax.Array
  score: jax.Array
  format_ok: jax.Array
  cost: jax.Array
  outcome_mask: jax.Array


def device_table(table: RoutingTable, sharding=None) -> DeviceTable:
  """Puts `table`'s arrays on device (replicated with `sharding`, if given).

  Unlogged entries are zeroed so a stray NaN there can never leak into a
  reward (they are masked out anyway).
  """
  mask = np.asarray(table.outcome_mask, bool)
  arrays = DeviceTable(
      features=np.asarray(table.features, np.float32),
      dataset_ids=np.asarray(table.dataset_ids, np.int32),
      score=np.where(mask, table.score, 0).astype(np.float32),
      format_ok=np.where(mask, table.format_ok, 0).astype(np.float32),
      cost=np.where(mask, table.cost, 0).astype(np.float32),
      outcome_mask=mask)
  return jax.tree.map(lambda x: jax.device_put(x, sharding), arrays)


class Outcomes(NamedTuple):
  """What an environment returns for N (query, arm) calls; all [N].

  score:     float32 in [0, 1]
  format_ok: float32 in {0, 1}, the answer parsed
  cost:      float32 >= 0, USD spent
  available: bool, False where no outcome is known (masked out of training)
  """
  score: np.ndarray | jax.Array
  format_ok: np.ndarray | jax.Array
  cost: np.ndarray | jax.Array
  available: np.ndarray | jax.Array


class Rollout(NamedTuple):
  """N = B * G scored rollouts (query-major), ready for the learner.

  query_indices:  [N] int32  row of the query in the table
  features:       [N, D] float32
  tokens:         [N, T] int32  the route as written
  arm_indices:    [N] int32  parsed arm, -1 malformed
  old_log_probs:  [N, T] float32  behaviour-policy log-probs of `tokens`
  token_mask:     [N, T] bool  route tokens, and False on masked rows
  components:     [N, 3] float32  (format, correctness, -cost / cost_scale)
  group_ids:      [N] int32  = repeat(arange(B), G)
  dataset_ids:    [N] int32
  mask:           [N] bool  False where the arm has no logged outcome
  score, format_ok, cost: [N] float32  raw outcomes (0 on malformed routes)
  """
  query_indices: jax.Array
  features: jax.Array
  tokens: jax.Array
  arm_indices: jax.Array
  old_log_probs: jax.Array
  token_mask: jax.Array
  components: jax.Array
  group_ids: jax.Array
  dataset_ids: jax.Array
  mask: jax.Array
  score: jax.Array
  format_ok: jax.Array
  cost: jax.Array


def group_ids_for(num_queries: int, group_size: int) -> jax.Array:
  """[B * G] int32: repeat(arange(B), G)."""
  return jnp.repeat(jnp.arange(num_queries, dtype=jnp.int32), group_size)


def sample_routes(policy: policies.RouterPolicy, params, features: jax.Array,
                  rng: jax.Array, group_size: int,
                  arm_mask: jax.Array | None = None) -> policies.Routes:
  """Samples G routes for each of B queries: features [B, D] -> Routes [B * G].

  The query network runs once per query (`repeats=G`), not once per route.
  `arm_mask [B, A]` (the table's `outcome_mask` rows): arms that were not run
  on a query are never drawn for it (categorical policy).
  """
  if arm_mask is not None:
    arm_mask = jnp.repeat(arm_mask, group_size, axis=0)
  return policy.sample(params, features, rng, arm_mask=arm_mask, repeats=group_size)


def lookup_outcomes(table: DeviceTable, query_indices: jax.Array,
                    arm_indices: jax.Array) -> Outcomes:
  """Logged outcomes of (query, arm) pairs; query_indices, arm_indices [N].

  A malformed route (arm -1) gets score 0, format_ok 0, cost 0 and is
  available (it is a real, failed rollout).
  """
  well_formed = arm_indices >= 0
  arm = jnp.where(well_formed, arm_indices, 0)
  logged = table.outcome_mask[query_indices, arm]
  pick = lambda values: jnp.where(well_formed & logged, values[query_indices, arm], 0.0)
  return Outcomes(score=pick(table.score), format_ok=pick(table.format_ok),
                  cost=pick(table.cost), available=~well_formed | logged)


def assemble_rollout(routes: policies.Routes, query_indices: jax.Array,
                     features: jax.Array, dataset_ids: jax.Array,
                     outcomes: Outcomes, group_size: int, *,
                     cost_scale: float) -> Rollout:
  """Builds a `Rollout` from B queries' sampled routes and their outcomes.

  Args:
    routes: Routes for N = B * G rollouts (query-major).
    query_indices: [B] table rows of the queries.
    features: [B, D] their features.
    dataset_ids: [B] their dataset ids.
    outcomes: `Outcomes` for the N rollouts.
    group_size: G.
    cost_scale: cost reward = -cost / cost_scale.
  """
  num_queries = query_indices.shape[0]
  format_ok = jnp.asarray(outcomes.format_ok, jnp.float32)
  score = jnp.asarray(outcomes.score, jnp.float32)
  cost = jnp.asarray(outcomes.cost, jnp.float32)
  mask = jnp.asarray(outcomes.available, bool)
  # The format component also requires the route itself to have parsed: a
  # well-formed route to an arm whose answer failed the format fails it too.
  format_ok = jnp.where(routes.arm_indices >= 0, format_ok, 0.0)
  return Rollout(
      query_indices=jnp.repeat(query_indices, group_size).astype(jnp.int32),
      features=jnp.repeat(features, group_size, axis=0),
      tokens=routes.tokens,
      arm_indices=routes.arm_indices,
      old_log_probs=routes.log_probs,
      token_mask=routes.token_mask & mask[:, None],
      components=rewards_lib.routing_components(format_ok, score, cost,
                                                cost_scale=cost_scale),
      group_ids=group_ids_for(num_queries, group_size),
      dataset_ids=jnp.repeat(dataset_ids, group_size).astype(jnp.int32),
      mask=mask,
      score=score, format_ok=format_ok, cost=cost)


def sample_rollouts(policy: policies.RouterPolicy, params, table: DeviceTable,
                    query_indices: jax.Array, rng: jax.Array, *,
                    group_size: int, cost_scale: float) -> Rollout:
  """Samples and scores G routes for each query, all on device (jit-able).

  Args:
    policy: the router.
    params: its parameters.
    table: the logged outcomes (`device_table`).
    query_indices: [B] int32 rows of `table`.
    rng: PRNG key.
    group_size: G, routes per query (static).
    cost_scale: cost reward = -cost / cost_scale (static).

  Returns:
    A `Rollout` of N = B * G rows.
  """
  features = table.features[query_indices]
  routes = sample_routes(policy, params, features, rng, group_size,
                         arm_mask=table.outcome_mask[query_indices])
  repeated_queries = jnp.repeat(query_indices, group_size)
  outcomes = lookup_outcomes(table, repeated_queries, routes.arm_indices)
  return assemble_rollout(routes, query_indices, features,
                          table.dataset_ids[query_indices], outcomes,
                          group_size, cost_scale=cost_scale)


# ---------------------------------------------------------------- live envs
@runtime_checkable
class LiveEnvironment(Protocol):
  """A source of outcomes for routes, called outside `jit`.

  `env(query_indices, arm_indices)` gets two int arrays [N] (rows of the
  query table the router was trained on and well-formed arm indices, never
  -1) and returns `Outcomes` of numpy arrays [N]. It may call LLM APIs,
  read a cache or run a simulator; it may block. Return `available=False`
  for calls that failed for reasons that are not the router's fault (a
  timeout, a rate limit): those rollouts are masked out of training.
  """

  def __call__(self, query_indices: np.ndarray, arm_indices: np.ndarray) -> Outcomes:
    ...


class LoggedEnvironment:
  """`LiveEnvironment` that answers from a `RoutingTable`'s logged outcomes.

  It returns exactly what the in-`jit` lookup (`lookup_outcomes`) returns, so
  it is the reference for testing a live-environment pipeline, and a template
  for writing a real one.
  """

  def __init__(self, table: RoutingTable):
    self.table = table
    self.num_calls = 0

  def __call__(self, query_indices: np.ndarray, arm_indices: np.ndarray) -> Outcomes:
    query_indices = np.asarray(query_indices, np.int64)
    arm_indices = np.asarray(arm_indices, np.int64)
    if query_indices.shape != arm_indices.shape or query_indices.ndim != 1:
      raise ValueError(f"query_indices {query_indices.shape} and arm_indices "
                       f"{arm_indices.shape} must be the same [N] shape")
    if ((arm_indices < 0) | (arm_indices >= self.table.num_arms)).any():
      raise ValueError(f"arm_indices must be in [0, {self.table.num_arms}); "
                       f"malformed routes (-1) are never sent to an environment")
    self.num_calls += len(query_indices)
    t = self.table
    logged = t.outcome_mask[query_indices, arm_indices].astype(bool)
    pick = lambda values: np.where(logged, values[query_indices, arm_indices],
                                   0.0).astype(np.float32)
    return Outcomes(score=pick(t.score), format_ok=pick(t.format_ok),
                    cost=pick(t.cost), available=logged)


def query_environment(env: LiveEnvironment, query_indices: np.ndarray,
                      arm_indices: np.ndarray) -> Outcomes:
  """Calls `env` for the well-formed routes only; malformed ones get zeros.

  Args:
    env: the environment.
    query_indices, arm_indices: [N] int (arm -1 = malformed route).

  Returns:
    `Outcomes` of numpy arrays [N], with the malformed-route rule applied.
  """
  query_indices = np.asarray(query_indices)
  arm_indices = np.asarray(arm_indices)
  n = len(arm_indices)
  out = Outcomes(score=np.zeros(n, np.float32), format_ok=np.zeros(n, np.float32),
                 cost=np.zeros(n, np.float32), available=np.ones(n, bool))
  called = np.flatnonzero(arm_indices >= 0)
  if called.size:
    answer = env(query_indices[called], arm_indices[called])
    for field, value in zip(Outcomes._fields, answer):
      value = np.asarray(value)
      if value.shape != (called.size,):
        raise ValueError(f"environment returned {field} of shape {value.shape}, "
                         f"expected ({called.size},)")
      if field != "available" and not np.isfinite(value).all():
        raise ValueError(f"environment returned a non-finite {field} for query "
                         f"{query_indices[called][~np.isfinite(value)][0]}")
      getattr(out, field)[called] = value
  return out


def collect_rollouts(policy: policies.RouterPolicy, params, table: DeviceTable,
                     query_indices: jax.Array, rng: jax.Array,
                     env: LiveEnvironment, *, group_size: int,
                     cost_scale: float, sample_fn=None,
                     assemble_fn=None) -> Rollout:
  """Like `sample_rollouts`, but outcomes come from a live environment.

  Sampling runs on device (jitted), the environment on the host, and the
  assembly on device again. Pass `sample_fn` / `assemble_fn` (jitted versions
  of `sample_routes` / `assemble_rollout` with the static arguments bound) to
  avoid re-tracing every call; by default they are jitted here.

  Args:
    policy, params, table, query_indices, rng, group_size, cost_scale: as in
      `sample_rollouts` (only `table.features` and `table.dataset_ids` are
      read; the outcomes come from `env`).
    env: a `LiveEnvironment`.

  Returns:
    A `Rollout`; with `env = LoggedEnvironment(table)` and the default
    `sample_fn` it equals `sample_rollouts(...)` with the same arguments: the
    default draws only arms with a logged outcome (`table.outcome_mask`), as
    `sample_rollouts` does. A `sample_fn` passed in takes (params, features,
    rng) and draws from every arm (a live environment can run any arm).
  """
  features = table.features[query_indices]
  if sample_fn is None:
    routes = jax.jit(lambda p, f, r, m: sample_routes(policy, p, f, r, group_size, arm_mask=m))(
        params, features, rng, table.outcome_mask[query_indices])
  else:
    routes = sample_fn(params, features, rng)
  if assemble_fn is None:
    assemble_fn = jax.jit(lambda *args: assemble_rollout(
        *args, group_size=group_size, cost_scale=cost_scale))
  host_queries, host_arms = jax.device_get(
      (jnp.repeat(query_indices, group_size), routes.arm_indices))
  outcomes = query_environment(env, host_queries, host_arms)
  return assemble_fn(routes, query_indices, features,
                     table.dataset_ids[query_indices], outcomes)
