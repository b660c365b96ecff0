"""Group advantages for RL routers: GRPO, Dr. GRPO, RLOO, GDPO and ReCal.

All functions work on flat, ragged batches: N rollouts, rollout i belongs to
group `group_ids[i]` in [0, num_groups) (the G routes sampled for one query;
groups may differ in size and rows may come in any order) and, for ReCal, to
dataset `dataset_ids[i]` in [0, num_datasets). `mask [N]` marks valid rows;
padding rows get advantage 0 and weight 0 whatever they hold.

Plug into your own loop in five lines:

    from recal_jax import advantage
    cfg = advantage.method_config("recal")
    out = advantage.recal_advantages(components, group_ids, num_groups,
                                     dataset_ids, num_datasets, mask, config=cfg)
    loss = ...(out.advantages, sample_weights=out.weights)

Conventions (every one is a keyword argument; see PEERS.md for the peers'):
  * `ddof` of the group std: 0 here by default (`jnp.std`); 1 gives TRL/verl.
  * `eps` is added to the std: A = (r - mean) / (std + eps).
  * a zero-spread group (all rewards equal) gets A = 0 (numerator is 0).
  * a one-member group gets A = 0 (`singleton="zero"`, TRL/tunix), or its raw
    reward (`singleton="raw"`, verl's GRPO loop: mean 0, std 1).
Every public function is pure, jit-able, vmap-able, and takes `axis_name` so
a batch sharded over devices (`shard_map` / `pmap`) gives the statistics of
the global batch; under `jit` with sharded inputs (GSPMD) no flag is needed.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from recal_jax import calibration
from recal_jax import rewards as rewards_lib
from recal_jax.segments import SegmentStats, segment_stats, segment_sum

Array = jax.Array

STD_SCALINGS = ("group", "batch", "none")
SINGLETON_RULES = ("zero", "raw")
ESTIMATORS = ("grpo", "rloo")


# ----------------------------------------------------------------- checks
def _as_mask(mask: Optional[Array], n: int) -> Array:
  if mask is None:
    return jnp.ones((n,), jnp.float32)
  mask = jnp.asarray(mask)
  if mask.shape != (n,):
    raise ValueError(f"mask must have shape [N]=({n},), got {mask.shape}")
  return mask.astype(jnp.float32)


def _check_ids(name: str, ids: Array, n: int, num: int) -> Array:
  ids = jnp.asarray(ids)
  if ids.shape != (n,):
    raise ValueError(f"{name} must have shape [N]=({n},), got {ids.shape}")
  if not jnp.issubdtype(ids.dtype, jnp.integer):
    raise ValueError(f"{name} must be integers, got dtype {ids.dtype}")
  if not isinstance(num, (int, np.integer)) or num < 1:
    raise ValueError(f"the number of segments for {name} must be a positive "
                     f"Python int (static), got {num!r}")
  return ids.astype(jnp.int32)


def _check_rewards(rewards: Array, ndim: int, name: str = "rewards") -> Array:
  rewards = jnp.asarray(rewards)
  if rewards.ndim != ndim:
    shape = "[N]" if ndim == 1 else "[N, K]"
    raise ValueError(f"{name} must have shape {shape}, got {rewards.shape}")
  if not jnp.issubdtype(rewards.dtype, jnp.floating):
    rewards = rewards.astype(jnp.float32)
  return rewards


def _valid_rows(rewards: Array, ids: Array, num: int, mask: Array) -> Array:
  """Mask of rows that are valid, finite and whose id is in range."""
  finite = jnp.isfinite(rewards)
  if finite.ndim > 1:
    finite = finite.all(axis=tuple(range(1, finite.ndim)))
  in_range = (ids >= 0) & (ids < num)
  return mask * finite.astype(mask.dtype) * in_range.astype(mask.dtype)


def check_inputs(components, group_ids, num_groups, dataset_ids=None,
                 num_datasets=None, mask=None) -> None:
  """Host-side value check; raises ValueError naming the first bad row.

  Call it outside `jit` on concrete arrays (e.g. right after a rollout) to turn
  NaN / infinite rewards or out-of-range ids into an error. Inside `jit` the
  functions of this module cannot raise on values: they drop such rows (A = 0,
  weight 0) and count them in `diagnostics["invalid_rows"]`.
  """
  r = np.asarray(components)
  m = np.ones(r.shape[0], bool) if mask is None else np.asarray(mask).astype(bool)
  bad = ~np.isfinite(r.reshape(r.shape[0], -1)).all(1) & m
  if bad.any():
    i = int(np.flatnonzero(bad)[0])
    raise ValueError(f"rewards row {i} is not finite: {r[i].tolist()}; "
                     f"{int(bad.sum())} non-finite row(s) in all")
  for name, ids, num in (("group_ids", group_ids, num_groups),
                         ("dataset_ids", dataset_ids, num_datasets)):
    if ids is None:
      continue
    ids = np.asarray(ids)
    out = ((ids < 0) | (ids >= num)) & m
    if out.any():
      i = int(np.flatnonzero(out)[0])
      raise ValueError(f"{name}[{i}] = {int(ids[i])} is outside [0, {num})")


# ------------------------------------------------------ group statistics
def group_stats(values: Array, group_ids: Array, num_groups: int,
                mask: Optional[Array] = None, *, ddof: int = 0,
                axis_name: Optional[str] = None) -> SegmentStats:
  """Per-group masked mean, std (with `ddof`) and count.

  Args:
    values: `[N]` or `[N, K]` rewards.
    group_ids: `[N]` int, in [0, num_groups).
    num_groups: static number of groups G.
    mask: `[N]` validity (1 valid, 0 padding); default all valid.
    ddof: 0 for the population std (`jnp.std`), 1 for the sample std
      (`torch.std`, TRL, verl). A group with count <= ddof gets std 0.
    axis_name: reduce across this mapped axis as well.

  Returns:
    `SegmentStats(mean, std, count)`, each `[G]` or `[G, K]`.
  """
  values = jnp.asarray(values, jnp.float32)
  n = values.shape[0]
  group_ids = _check_ids("group_ids", group_ids, n, num_groups)
  mask = _as_mask(mask, n)
  return segment_stats(values, group_ids, num_groups, mask, ddof=ddof,
                       axis_name=axis_name)


def _batch_std(values: Array, mask: Array, ddof: int,
               axis_name: Optional[str]) -> Array:
  """Std over every valid row of the batch (per column if `[N, K]`)."""
  zeros = jnp.zeros(values.shape[0], jnp.int32)
  return segment_stats(values, zeros, 1, mask, ddof=ddof,
                       axis_name=axis_name).std[0]


def _normalized_deviation(values: Array, group_ids: Array, num_groups: int,
                          mask: Array, *, std_scaling: str, ddof: int,
                          eps: float, singleton: str,
                          axis_name: Optional[str]) -> Array:
  """(x - mean_g) / (scale + eps) for `[N]` or `[N, K]` values, 0 off-mask.

  `mask` may be `[N]` or `[N, K]` (a column-specific membership, used for
  conditional component statistics).
  """
  if std_scaling not in STD_SCALINGS:
    raise ValueError(f"std_scaling must be one of {STD_SCALINGS}, got {std_scaling!r}")
  if singleton not in SINGLETON_RULES:
    raise ValueError(f"singleton must be one of {SINGLETON_RULES}, got {singleton!r}")
  stats = segment_stats(values, group_ids, num_groups, mask, ddof=ddof,
                        axis_name=axis_name)
  m = mask if mask.ndim == values.ndim else mask.reshape(mask.shape + (1,) * (values.ndim - 1))
  m = jnp.broadcast_to(m, values.shape)
  safe_values = jnp.where(m > 0, values, 0.0)
  mean = stats.mean[group_ids]
  if std_scaling == "group":
    scale = stats.std[group_ids]
  elif std_scaling == "batch":
    scale = jnp.broadcast_to(_batch_std(values, mask, ddof, axis_name), values.shape)
  else:
    scale = jnp.ones_like(values)
  adv = (safe_values - mean) / (scale + eps)
  if singleton == "raw":
    # verl's loop: a one-member group has mean 0 and std 1.
    lone = stats.count[group_ids] == 1
    adv = jnp.where(lone, safe_values / (1.0 + eps), adv)
  return jnp.where(m > 0, adv, 0.0)


# ---------------------------------------------------- scalar estimators
def grpo_advantages(rewards: Array, group_ids: Array, num_groups: int,
                    mask: Optional[Array] = None, *, std_scaling: str = "group",
                    ddof: int = 0, eps: float = 1e-6, singleton: str = "zero",
                    axis_name: Optional[str] = None) -> Array:
  """GRPO group-relative advantages (and Dr. GRPO with `std_scaling='none'`).

    A_i = (r_i - mean_{g(i)}(r)) / (s_i + eps)
    s_i = std_{g(i)}(r)  ('group', GRPO / TRL / verl),
          std_batch(r)   ('batch', TRL `scale_rewards='batch'`),
          1              ('none', Dr. GRPO)

  Args:
    rewards: `[N]` scalar rewards.
    group_ids: `[N]` int group of each rollout, in [0, num_groups).
    num_groups: static G.
    mask: `[N]` validity; padding rows get 0.
    std_scaling: 'group' | 'batch' | 'none'.
    ddof: degrees of freedom of the std (0 numpy/JAX; 1 torch, TRL, verl).
    eps: added to the std (TRL 1e-4, verl/tunix 1e-6, OpenRLHF 1e-9).
    singleton: what a one-member group gets: 'zero' (A = 0) or 'raw'
      (A = r / (1 + eps), verl's loop).
    axis_name: mapped axis to reduce the statistics over.

  Returns:
    `[N]` float32 advantages. A zero-spread group gives A = 0; rows that are
    masked, non-finite or have an out-of-range group id give 0.
  """
  rewards = _check_rewards(rewards, 1)
  n = rewards.shape[0]
  group_ids = _check_ids("group_ids", group_ids, n, num_groups)
  mask = _valid_rows(rewards, group_ids, num_groups, _as_mask(mask, n))
  return _normalized_deviation(rewards, group_ids, num_groups, mask,
                               std_scaling=std_scaling, ddof=ddof, eps=eps,
                               singleton=singleton, axis_name=axis_name)


def rloo_advantages(rewards: Array, group_ids: Array, num_groups: int,
                    mask: Optional[Array] = None, *, singleton: str = "zero",
                    axis_name: Optional[str] = None) -> Array:
  """REINFORCE leave-one-out advantages.

    A_i = r_i - (sum_{j in g(i), j != i} r_j) / (n_g - 1)
        = n_g / (n_g - 1) * (r_i - mean_g(r))

  A one-member group has no other member: 'zero' gives 0 (TRL turns its NaN
  into 0, verl's vectorised RLOO), 'raw' gives r_i (verl's loop version).

  Args / returns: as `grpo_advantages`; `[N]` float32.
  """
  if singleton not in SINGLETON_RULES:
    raise ValueError(f"singleton must be one of {SINGLETON_RULES}, got {singleton!r}")
  rewards = _check_rewards(rewards, 1)
  n = rewards.shape[0]
  group_ids = _check_ids("group_ids", group_ids, n, num_groups)
  mask = _valid_rows(rewards, group_ids, num_groups, _as_mask(mask, n))
  safe = jnp.where(mask > 0, rewards, 0.0)
  sums = segment_sum(jnp.stack([mask, safe], -1), group_ids, num_groups, axis_name)
  count, total = sums[group_ids, 0], sums[group_ids, 1]
  others = jnp.maximum(count - 1.0, 1.0)
  adv = safe - (total - safe) / others
  adv = jnp.where(count > 1, adv, safe if singleton == "raw" else 0.0)
  return jnp.where(mask > 0, adv, 0.0)


def whiten(values: Array, mask: Optional[Array] = None, *, ddof: int = 0,
           eps: float = 1e-6, axis_name: Optional[str] = None) -> Array:
  """Batch whitening: (x - mean_batch) / (std_batch + eps) over valid rows.

  `values [N]`; padding rows get 0. (verl whitens with rsqrt(var + 1e-8) and a
  token-weighted variance; TRL's normalize-then-sum adds 1e-4 to the std.)
  """
  values = _check_rewards(values, 1, "values")
  n = values.shape[0]
  mask = _as_mask(mask, n)
  zeros = jnp.zeros((n,), jnp.int32)
  return _normalized_deviation(values, zeros, 1, mask, std_scaling="group",
                               ddof=ddof, eps=eps, singleton="zero",
                               axis_name=axis_name)


# ------------------------------------------- stage 1: hierarchical gate
@dataclasses.dataclass(frozen=True)
class Hierarchy:
  """A priority tree over K reward components (METHOD.md, stage 1).

  Attributes:
    names: component names, `[K]`.
    parents: parent index of each component, -1 for a root.
    thresholds: pass predicate `pass_k(r) = r >= thresholds[k]`; `None` means
      the component never blocks its children (e.g. a leaf such as cost).
    fail_values: the reward a component gets where its gate failed (used by
      the unconditional variant; the conditional one gives A = 0 there).

  The routing default is the chain format -> correctness -> cost.
  """

  names: tuple[str, ...] = rewards_lib.COMPONENTS
  parents: tuple[int, ...] = (-1, 0, 1)
  thresholds: tuple[Optional[float], ...] = (0.5, 0.5, None)
  fail_values: tuple[float, ...] = (0.0, 0.0, 0.0)

  def __post_init__(self):
    k = len(self.names)
    for field in ("parents", "thresholds", "fail_values"):
      if len(getattr(self, field)) != k:
        raise ValueError(f"Hierarchy.{field} has {len(getattr(self, field))} "
                         f"entries for {k} components {self.names}")
    for c in range(k):
      self.ancestors(c)  # raises on a cycle or a bad parent

  @property
  def num_components(self) -> int:
    return len(self.names)

  def ancestors(self, component: int) -> tuple[int, ...]:
    """Indices of the ancestors of `component`, nearest first."""
    out, node = [], self.parents[component]
    while node != -1:
      if not 0 <= node < len(self.names):
        raise ValueError(f"Hierarchy.parents[{component}] leads to {node}, "
                         f"outside [-1, {len(self.names)})")
      if node in out or node == component:
        raise ValueError(f"Hierarchy.parents has a cycle through {self.names[component]!r}")
      out.append(node)
      node = self.parents[node]
    return tuple(out)


def hierarchical_gate(rewards: Array, hierarchy: Hierarchy = Hierarchy()
                      ) -> tuple[Array, Array]:
  """Gates and gated rewards of a priority tree (METHOD.md, stage 1).

    pass[i, j]  = r[i, j] >= thresholds[j]          (1 if thresholds[j] is None)
    gate[i, k]  = prod_{j in ancestors(k)} pass[i, j]
    rg[i, k]    = gate[i, k] * r[i, k] + (1 - gate[i, k]) * fail_values[k]

  Args:
    rewards: `[N, K]` reward components in the hierarchy's order.
    hierarchy: the tree; K must match.

  Returns:
    `(gate, gated)`, both `[N, K]` float32. Roots have gate 1.
  """
  rewards = _check_rewards(rewards, 2)
  k = rewards.shape[1]
  if k != hierarchy.num_components:
    raise ValueError(f"rewards has K={k} components, the hierarchy has "
                     f"{hierarchy.num_components} {hierarchy.names}")
  passes = []
  for j, threshold in enumerate(hierarchy.thresholds):
    passes.append(jnp.ones(rewards.shape[0], jnp.float32) if threshold is None
                  else (rewards[:, j] >= threshold).astype(jnp.float32))
  gates = []
  for c in range(k):  # K is small and static: unrolled at trace time.
    gate = jnp.ones(rewards.shape[0], jnp.float32)
    for j in hierarchy.ancestors(c):
      gate = gate * passes[j]
    gates.append(gate)
  gate = jnp.stack(gates, axis=1)
  fail = jnp.asarray(hierarchy.fail_values, jnp.float32)[None, :]
  gated = gate * rewards + (1.0 - gate) * fail
  return gate, gated


# --------------------------------------------- component-wise advantages
def componentwise_advantages(rewards: Array, group_ids: Array, num_groups: int,
                             mask: Optional[Array] = None, *,
                             gate: Optional[Array] = None,
                             conditional: bool = True,
                             estimator: str = "grpo",
                             std_scaling: str = "group", ddof: int = 0,
                             eps: float = 1e-6, singleton: str = "zero",
                             axis_name: Optional[str] = None) -> Array:
  """Per-component group advantages `A[i, k]` (GDPO-style, not on the sum).

    A[i, k] = (r[i, k] - mean_g(r[., k])) / (std_g(r[., k]) + eps)

  With a `gate [N, K]` and `conditional=True` the statistics of component k
  use only the members of the group whose gate passed, and A[i, k] = 0 where
  gate[i, k] = 0: a format failure is blamed on format alone, correctness is
  compared among well-formed rollouts, cost among correct ones. With
  `conditional=False` the gate is ignored here (pass gated rewards in).

  All K components are reduced in one fused segment reduction.

  Args:
    rewards: `[N, K]` (gated) reward components.
    group_ids, num_groups, mask: as in `grpo_advantages`.
    gate: `[N, K]` 0/1 gate, or None (no gating).
    conditional: restrict statistics to gated-in members (see above).
    estimator: 'grpo' (normalised deviation) or 'rloo' (leave-one-out).
    std_scaling, ddof, eps, singleton, axis_name: as in `grpo_advantages`.

  Returns:
    `[N, K]` float32.
  """
  if estimator not in ESTIMATORS:
    raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
  rewards = _check_rewards(rewards, 2)
  n, k = rewards.shape
  group_ids = _check_ids("group_ids", group_ids, n, num_groups)
  row_mask = _valid_rows(rewards, group_ids, num_groups, _as_mask(mask, n))
  member = jnp.broadcast_to(row_mask[:, None], (n, k))
  if gate is not None:
    gate = jnp.asarray(gate, jnp.float32)
    if gate.shape != (n, k):
      raise ValueError(f"gate must have shape [N, K]=({n}, {k}), got {gate.shape}")
    if conditional:
      member = member * gate
  if estimator == "grpo":
    return _normalized_deviation(rewards, group_ids, num_groups, member,
                                 std_scaling=std_scaling, ddof=ddof, eps=eps,
                                 singleton=singleton, axis_name=axis_name)
  safe = jnp.where(member > 0, rewards, 0.0)
  sums = segment_sum(jnp.stack([member, safe], -1), group_ids, num_groups, axis_name)
  count, total = sums[group_ids, :, 0], sums[group_ids, :, 1]
  adv = safe - (total - safe) / jnp.maximum(count - 1.0, 1.0)
  adv = jnp.where(count > 1, adv, safe if singleton == "raw" else 0.0)
  return jnp.where(member > 0, adv, 0.0)


def gdpo_advantages(rewards: Array, group_ids: Array, num_groups: int,
                    mask: Optional[Array] = None, *,
                    component_weights: Optional[tuple[float, ...]] = None,
                    ddof: int = 0, eps: float = 1e-6, whiten_sum: bool = True,
                    whiten_eps: Optional[float] = None,
                    axis_name: Optional[str] = None) -> Array:
  """GDPO: normalise each component within its group, sum, then whiten.

    A_k[i] = (r[i,k] - mean_g r[.,k]) / (std_g r[.,k] + eps)
    S[i]   = sum_k w_k A_k[i]
    A[i]   = (S[i] - mean_batch S) / (std_batch S + whiten_eps)   (whiten_sum)

  No gating. With ddof=1 and eps = whiten_eps = 1e-4 this is NVlabs GDPO /
  TRL's `normalize_then_sum`.

  Returns:
    `[N]` float32.
  """
  rewards = _check_rewards(rewards, 2)
  n, k = rewards.shape
  group_ids = _check_ids("group_ids", group_ids, n, num_groups)
  mask = _valid_rows(rewards, group_ids, num_groups, _as_mask(mask, n))
  per = componentwise_advantages(rewards, group_ids, num_groups, mask, ddof=ddof,
                                 eps=eps, axis_name=axis_name)
  weights = jnp.asarray(component_weights if component_weights is not None
                        else (1.0,) * k, jnp.float32)
  if weights.shape != (k,):
    raise ValueError(f"component_weights must have K={k} entries, got {weights.shape[0]}")
  total = per @ weights
  if whiten_sum:
    total = whiten(total, mask, ddof=ddof,
                   eps=eps if whiten_eps is None else whiten_eps,
                   axis_name=axis_name)
  return total


# ----------------------------------------------- the ReCal entry point
@dataclasses.dataclass(frozen=True)
class ReCalConfig:
  """Every switch of the calibrated advantage (METHOD.md). Hashable: static.

  Stage 1 (decomposition):
    reward: 'components' (component-wise advantages), 'sum' (one advantage
      on sum_k w_k r_k: plain GRPO/RLOO), or 'router_r1' (Router-R1 scalar).
    hierarchy: the priority tree, or None for no gating (GDPO).
    conditional: statistics of component k only among gated-in members.
    component_weights: w_k, for the combination (and for 'sum').
    estimator, std_scaling, ddof, eps, singleton: as in `grpo_advantages`.
    whiten: whiten the combined advantage over the batch.
    router_r1_cost_weight, correct_threshold: the scalar baseline's knobs.
  Stage 2 (distribution-aware optimisation):
    variance_weighting: per-group weights omega from the spread of
      component `variance_component`, with `variance_h` in
      ('std', 'bernoulli', 'power'), `variance_power`, clipped to
      [weight_min, weight_max].
    dataset_norm: 'none', 'batch' or 'running' standardisation of the
      advantages per dataset (`running_decay` for the running statistics).
    dataset_norm_components: raw components standardised per dataset (batch
      statistics) before stage 1, e.g. (2,) for cost.
    balance_datasets: multiply weights so each dataset in the batch counts
      equally in the loss.
  """

  reward: str = "components"
  hierarchy: Optional[Hierarchy] = Hierarchy()
  conditional: bool = True
  component_weights: tuple[float, ...] = (1.0, 1.0, 0.5)
  estimator: str = "grpo"
  std_scaling: str = "group"
  ddof: int = 0
  eps: float = 1e-6
  singleton: str = "zero"
  whiten: bool = False
  router_r1_cost_weight: float = 0.5
  correct_threshold: float = 0.5
  variance_weighting: bool = True
  variance_h: str = "bernoulli"
  variance_power: float = 1.0
  variance_component: int = rewards_lib.CORRECTNESS
  weight_min: float = 0.1
  weight_max: float = 3.0
  dataset_norm: str = "batch"
  dataset_norm_components: tuple[int, ...] = (rewards_lib.COST,)
  running_decay: float = 0.99
  balance_datasets: bool = False

  def __post_init__(self):
    if self.reward not in ("components", "sum", "router_r1"):
      raise ValueError(f"reward must be 'components', 'sum' or 'router_r1', got {self.reward!r}")
    if self.dataset_norm not in ("none", "batch", "running"):
      raise ValueError(f"dataset_norm must be 'none', 'batch' or 'running', got {self.dataset_norm!r}")
    if self.estimator not in ESTIMATORS:
      raise ValueError(f"estimator must be one of {ESTIMATORS}, got {self.estimator!r}")
    if self.std_scaling not in STD_SCALINGS:
      raise ValueError(f"std_scaling must be one of {STD_SCALINGS}, got {self.std_scaling!r}")
    if self.variance_h not in calibration.VARIANCE_H:
      raise ValueError(f"variance_h must be one of {calibration.VARIANCE_H}, got {self.variance_h!r}")
    if not 0 <= self.weight_min <= self.weight_max:
      raise ValueError(f"need 0 <= weight_min <= weight_max, got {self.weight_min}, {self.weight_max}")

  def replace(self, **changes) -> "ReCalConfig":
    return dataclasses.replace(self, **changes)


_STAGE2_OFF = dict(variance_weighting=False, dataset_norm="none",
                   dataset_norm_components=(), balance_datasets=False)

METHODS: dict[str, ReCalConfig] = {
    # ReCal, every stage on.
    "recal": ReCalConfig(),
    # Ablations: one stage off at a time.
    "recal_no_hierarchy": ReCalConfig(hierarchy=None),
    "recal_no_variance_weights": ReCalConfig(variance_weighting=False),
    "recal_no_dataset_norm": ReCalConfig(dataset_norm="none", dataset_norm_components=()),
    # Baselines through the same code.
    "grpo": ReCalConfig(reward="sum", hierarchy=None, **_STAGE2_OFF),
    "dr_grpo": ReCalConfig(reward="sum", hierarchy=None, std_scaling="none", **_STAGE2_OFF),
    "rloo": ReCalConfig(reward="sum", hierarchy=None, estimator="rloo", **_STAGE2_OFF),
    "router_r1": ReCalConfig(reward="router_r1", hierarchy=None, **_STAGE2_OFF),
    "gdpo": ReCalConfig(reward="components", hierarchy=None, whiten=True, **_STAGE2_OFF),
}


def method_config(name: str, **overrides: Any) -> ReCalConfig:
  """The `ReCalConfig` of a named method (`METHODS`), with field overrides."""
  if name not in METHODS:
    raise ValueError(f"unknown method {name!r}; known: {sorted(METHODS)}")
  return METHODS[name].replace(**overrides) if overrides else METHODS[name]


class ReCalOutput(NamedTuple):
  advantages: Array  # [N] float32, 0 on invalid rows
  weights: Array  # [N] float32 per-rollout loss weights, 0 on invalid rows
  diagnostics: dict  # name -> scalar or small array (see recal_advantages)
  dataset_state: Optional[calibration.RunningDatasetStats]


def recal_advantages(components: Array, group_ids: Array, num_groups: int,
                     dataset_ids: Optional[Array] = None, num_datasets: int = 1,
                     mask: Optional[Array] = None, *,
                     config: ReCalConfig = ReCalConfig(),
                     dataset_state: Optional[calibration.RunningDatasetStats] = None,
                     axis_name: Optional[str] = None) -> ReCalOutput:
  """The ReCal calibrated advantage: stages 1 and 2 of METHOD.md, all switchable.

    0. (optional) r[., k] <- per-dataset standardised r[., k], k in
       `dataset_norm_components` (continuous components such as cost).
    1. gate, rg = hierarchical_gate(r)                     (if hierarchy)
       A[i, k]  = component-wise group advantage of rg     (conditional or not)
       A[i]     = sum_k w_k A[i, k]          then optional batch whitening
       ('sum': A = GRPO/RLOO of sum_k w_k r_k; 'router_r1': of the scalar
       Router-R1 reward)
    2. omega[g] = clip(h(spread_g) / mean_g' h(spread_g'), w_min, w_max)
       Ahat[i]  = (A[i] - mu[d(i)]) / (sigma[d(i)] + eps)   (batch or running)
       weight[i] = omega[g(i)] (* dataset-balancing weight)

  With `reward='sum'` and stage 2 off this is GRPO on the summed reward; with
  `hierarchy=None`, `whiten=True` and stage 2 off, it is GDPO.

  Args:
    components: `[N, K]` reward components (routing: format, correctness,
      cost reward), in the order of `config.hierarchy`.
    group_ids: `[N]` int, group (query) of each rollout.
    num_groups: static number of groups.
    dataset_ids: `[N]` int dataset of each rollout (default: all 0).
    num_datasets: static number of datasets.
    mask: `[N]` validity.
    config: the switches (`method_config(name)` for the named methods).
    dataset_state: running per-dataset statistics (required when
      `config.dataset_norm == 'running'`; see `calibration`).
    axis_name: mapped axis to reduce every statistic over.

  Returns:
    `ReCalOutput(advantages [N], weights [N], diagnostics, dataset_state)`.
    Diagnostics: `component_mean [K]` (valid rows), `gate_pass_rate [K]`,
    `component_adv_std [K]`, `dataset_count [D]`, `dataset_adv_mean [D]`,
    `dataset_adv_std [D]`, `weight_mean`, `zero_spread_groups` (fraction of
    groups with no spread in the variance component), `invalid_rows` (rows
    dropped because a reward was non-finite or an id out of range).
  """
  components = _check_rewards(components, 2, "components")
  n, k = components.shape
  group_ids = _check_ids("group_ids", group_ids, n, num_groups)
  if dataset_ids is None:
    dataset_ids = jnp.zeros((n,), jnp.int32)
  dataset_ids = _check_ids("dataset_ids", dataset_ids, n, num_datasets)
  given_mask = _as_mask(mask, n)
  valid = _valid_rows(components, group_ids, num_groups, given_mask)
  valid = valid * ((dataset_ids >= 0) & (dataset_ids < num_datasets))
  if len(config.component_weights) != k:
    raise ValueError(f"config.component_weights has {len(config.component_weights)} "
                     f"entries for K={k} components")
  if config.dataset_norm == "running" and dataset_state is None:
    raise ValueError("config.dataset_norm='running' needs a dataset_state "
                     "(calibration.init_dataset_stats(num_datasets))")
  raw = jnp.where(valid[:, None] > 0, components, 0.0)
  diagnostics = {
      "invalid_rows": jnp.sum(given_mask - valid) if axis_name is None
                      else jax.lax.psum(jnp.sum(given_mask - valid), axis_name),
  }

  # Stage 0: per-dataset standardisation of continuous raw components.
  r = raw
  if config.dataset_norm_components:
    cols = tuple(config.dataset_norm_components)
    normed = calibration.dataset_normalize(
        raw[:, cols], dataset_ids, num_datasets, valid, eps=config.eps,
        ddof=config.ddof, axis_name=axis_name)
    r = r.at[:, cols].set(normed)

  weights_k = jnp.asarray(config.component_weights, jnp.float32)
  counts = segment_sum(valid, jnp.zeros((n,), jnp.int32), 1, axis_name)[0]
  diagnostics["component_mean"] = (
      segment_sum(raw * valid[:, None], jnp.zeros((n,), jnp.int32), 1, axis_name)[0]
      / jnp.maximum(counts, 1.0))

  # Stage 1.
  estimator_kwargs = dict(std_scaling=config.std_scaling, ddof=config.ddof,
                          eps=config.eps, singleton=config.singleton,
                          axis_name=axis_name)
  if config.reward == "components":
    gate = None
    if config.hierarchy is not None:
      gate, r = hierarchical_gate(r, config.hierarchy)
    per_component = componentwise_advantages(
        r, group_ids, num_groups, valid, gate=gate,
        conditional=config.conditional, estimator=config.estimator,
        **estimator_kwargs)
    adv = per_component @ weights_k
    gate_rate = (jnp.ones((k,)) if gate is None else
                 segment_sum(gate * valid[:, None], jnp.zeros((n,), jnp.int32), 1,
                             axis_name)[0] / jnp.maximum(counts, 1.0))
    diagnostics["gate_pass_rate"] = gate_rate
    diagnostics["component_adv_std"] = jnp.sqrt(
        segment_sum(per_component ** 2 * valid[:, None], jnp.zeros((n,), jnp.int32),
                    1, axis_name)[0] / jnp.maximum(counts, 1.0))
  else:
    if config.reward == "sum":
      scalar = r @ weights_k
    else:
      scalar = rewards_lib.router_r1_reward(
          r, cost_weight=config.router_r1_cost_weight,
          correct_threshold=config.correct_threshold)
    if config.estimator == "grpo":
      adv = grpo_advantages(scalar, group_ids, num_groups, valid, **estimator_kwargs)
    else:
      adv = rloo_advantages(scalar, group_ids, num_groups, valid,
                            singleton=config.singleton, axis_name=axis_name)
  if config.whiten:
    adv = whiten(adv, valid, ddof=config.ddof, eps=config.eps, axis_name=axis_name)

  # Stage 2: variance-aware group weights.
  spread = calibration.group_spread(
      raw[:, config.variance_component], group_ids, num_groups, valid,
      h=config.variance_h, power=config.variance_power, axis_name=axis_name)
  group_present = spread.count > 0
  diagnostics["zero_spread_groups"] = (
      jnp.sum((spread.h <= 0) & group_present) / jnp.maximum(jnp.sum(group_present), 1))
  if config.variance_weighting:
    omega = calibration.variance_weights_from_spread(
        spread, w_min=config.weight_min, w_max=config.weight_max)
    weights = omega[group_ids] * valid
  else:
    weights = valid
  if config.balance_datasets:
    weights = weights * calibration.dataset_balance_weights(
        dataset_ids, num_datasets, valid, axis_name=axis_name)

  # Stage 2: per-dataset normalisation of the advantages.
  new_state = dataset_state
  if config.dataset_norm == "batch":
    adv = calibration.dataset_normalize(adv, dataset_ids, num_datasets, valid,
                                        eps=config.eps, ddof=config.ddof,
                                        axis_name=axis_name)
  elif config.dataset_norm == "running":
    new_state = calibration.update_dataset_stats(
        dataset_state, adv, dataset_ids, valid, decay=config.running_decay,
        axis_name=axis_name)
    adv = calibration.normalize_with_stats(new_state, adv, dataset_ids, valid,
                                           eps=config.eps)
  adv = jnp.where(valid > 0, adv, 0.0)

  ds = segment_stats(adv, dataset_ids, num_datasets, valid, ddof=0,
                     axis_name=axis_name)
  diagnostics.update(dataset_count=ds.count, dataset_adv_mean=ds.mean,
                     dataset_adv_std=ds.std,
                     weight_mean=jnp.sum(weights) / jnp.maximum(counts, 1.0))
  return ReCalOutput(advantages=adv, weights=weights, diagnostics=diagnostics,
                     dataset_state=new_state)
