"""Group advantage estimators: GRPO, Dr. GRPO, RLOO, GDPO, the hierarchical gate.

Flat batches: N rollouts, rollout i in group `group_ids[i]` of
[0, num_groups), validity `mask [N]` (padding rows get 0 whatever they hold).
Public as `recal_jax.advantage.*`; see that module for the conventions.

Layout (`group_size`, static): None means any layout (groups of any sizes,
rows in any order; scatter-adds). An int G means the caller lays every group
out as G contiguous rows in order, `group_ids = first + repeat(arange(B), G)`
(the trainer, tunix and most RL code do): only `group_ids[0]` is read (the
first group of the local rows, e.g. of a `shard_map` shard), sums are strided
adds and reading back is a broadcast. The layout is not checked at run time:
`check_inputs(..., group_size=G)` checks it on the host.

Every public function is wrapped in `jax.jit` with its configuration static
(num_groups, group_size, the conventions, `axis_name`), so eager calls with
the same shapes and arguments compile once; under `jit`, `vmap`, `shard_map`
or `pmap` they are traced inside the caller's transform.
"""

from __future__ import annotations

import functools
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from recal_jax import segments as seg_lib
from recal_jax.segments import Moments, Segmentation, WholeBatch

Array = jax.Array

STD_SCALINGS = ("group", "batch", "none")
SINGLETON_RULES = ("zero", "raw")
ESTIMATORS = ("grpo", "rloo")


def _jit(*static):
  return functools.partial(jax.jit, static_argnames=static)


# ----------------------------------------------------------------- checks
def as_mask(mask: Optional[Array], n: int) -> Array:
  if mask is None:
    return jnp.ones((n,), jnp.float32)
  mask = jnp.asarray(mask)
  if mask.shape != (n,):
    raise ValueError(f"mask must have shape [N]=({n},), got {mask.shape}")
  return mask.astype(jnp.float32)


def check_ids(name: str, ids: Array, n: int, num: int) -> Array:
  ids = jnp.asarray(ids)
  if ids.shape != (n,):
    raise ValueError(f"{name} must have shape [N]=({n},), got {ids.shape}")
  if not jnp.issubdtype(ids.dtype, jnp.integer):
    raise ValueError(f"{name} must be integers, got dtype {ids.dtype}")
  if not isinstance(num, (int, np.integer)) or num < 1:
    raise ValueError(f"the number of segments for {name} must be a positive "
                     f"Python int (static), got {num!r}")
  return ids.astype(jnp.int32)


def check_rewards(rewards: Array, ndim: int, name: str = "rewards") -> Array:
  rewards = jnp.asarray(rewards)
  if rewards.ndim != ndim:
    raise ValueError(f"{name} must have shape {'[N]' if ndim == 1 else '[N, K]'}, "
                     f"got {rewards.shape}")
  return rewards.astype(jnp.float32)


def check_choices(estimator: str = "grpo", std_scaling: str = "group",
                  singleton: str = "zero") -> None:
  for name, value, allowed in (("estimator", estimator, ESTIMATORS),
                               ("std_scaling", std_scaling, STD_SCALINGS),
                               ("singleton", singleton, SINGLETON_RULES)):
    if value not in allowed:
      raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


def columns(x: Array) -> list[Array]:
  return [x] if x.ndim == 1 else [x[:, k] for k in range(x.shape[1])]


def valid_rows(rewards: Array, mask: Array, *segmentations: Segmentation) -> Array:
  """mask * [every reward of the row finite] * [its ids in range]."""
  finite = jnp.all(jnp.isfinite(rewards.reshape(rewards.shape[0], -1)), axis=1)
  for seg in segmentations:
    ok = seg.in_range()
    if ok is not None:
      finite = finite & ok
  return mask * finite.astype(jnp.float32)


def check_inputs(components, group_ids, num_groups, dataset_ids=None,
                 num_datasets=None, mask=None, *, group_size=None) -> None:
  """Host-side value check; raises ValueError naming the first bad row.

  Call it outside `jit` on concrete arrays (e.g. after a rollout). Inside
  `jit` values cannot raise: non-finite rows and out-of-range ids are dropped
  (A = 0, weight 0) and counted in `diagnostics["invalid_rows"]`. With
  `group_size=G` it also checks the contiguous layout: row i (masked or not)
  has `group_ids[i] == group_ids[0] + i // G` and the dataset id of its
  block's first row.
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
  if group_size is None:
    return
  g = np.asarray(group_ids)
  if g.shape[0] % group_size:
    raise ValueError(f"group_size={group_size} does not divide the batch N={g.shape[0]}")
  rows = np.arange(g.shape[0])
  expected = g[0] + rows // group_size
  bad = np.flatnonzero(g != expected) if g.size else []
  if len(bad):
    i = int(bad[0])
    raise ValueError(f"group_size={group_size}: group_ids[{i}] = {int(g[i])}, the "
                     f"contiguous layout needs {int(expected[i])} (group_ids[0] + {i} // {group_size})")
  if dataset_ids is not None:
    d = np.asarray(dataset_ids)
    expected = d[rows - rows % group_size]
    bad = np.flatnonzero(d != expected)
    if len(bad):
      i = int(bad[0])
      raise ValueError(f"group_size={group_size}: dataset_ids[{i}] = {int(d[i])} differs "
                       f"from its group's first row ({int(expected[i])})")


# ------------------------------------------------------------ estimators
def center_scale(mo: Moments, *, estimator: str = "grpo",
                 std_scaling: str = "group", ddof: int = 0, eps: float = 1e-6,
                 singleton: str = "zero", batch: Optional[Moments] = None
                 ) -> tuple[Array, Array]:
  """Per-segment `(offset, scale)`: A = ((x - shift) - offset) * scale.

    GRPO: A = (x - mean) / (s + eps), s = group std, batch std or 1
    RLOO: A = n / (n - 1) (x - mean)
  A group without spread (every member equal) gets scale 0: A = 0 exactly.
  A one-member group gets 0 (`singleton='zero'`) or its raw value x / (1 +
  eps) (GRPO) or x (RLOO) for 'raw' (offset = -shift, so x - shift - offset
  is x exactly). `batch`: the whole-batch moments for `std_scaling='batch'`.
  """
  count, spread = mo.count, mo.m2 > 0
  if estimator == "grpo":
    if std_scaling == "group":
      s = jnp.sqrt(mo.var(ddof))
    elif std_scaling == "batch":
      s = jnp.sqrt(batch.var(ddof))
    else:
      s = jnp.ones_like(count)
    scale, lone_scale = 1.0 / (s + eps), 1.0 / (1.0 + eps)
  else:
    scale, lone_scale = count / jnp.maximum(count - 1.0, 1.0), 1.0
    spread = spread & (count > 1)
  scale = jnp.where(spread, scale, 0.0)
  offset = mo.offset
  if singleton == "raw":
    lone = count == 1
    offset = jnp.where(lone, -mo.shift, offset)
    scale = jnp.where(lone, lone_scale, scale)
  return offset, scale


def estimate(values: list[Array], members: list[Array], seg: Segmentation, *,
             estimator: str = "grpo", std_scaling: str = "group",
             ddof: int = 0, eps: float = 1e-6, singleton: str = "zero",
             moments: Optional[list[Moments]] = None,
             square_sums: bool = False):
  """Group advantages of each row-wise column (`center_scale` on member rows,
  0 elsewhere); all columns' statistics are reduced together (or given).

  `square_sums`: also return, per column, sum_i m_i A_i^2 over the batch,
  from the moments without a pass over the rows:
  sum_g scale_g^2 (m2_g + count_g (offset_g - center_offset_g)^2).
  """
  moments = seg.moments(values, members) if moments is None else moments
  out, squares = [], []
  for v, m, mo in zip(values, members, moments):
    batch = batch_moments(mo) if std_scaling == "batch" else None
    offset, scale = center_scale(mo, estimator=estimator, std_scaling=std_scaling,
                                 ddof=ddof, eps=eps, singleton=singleton, batch=batch)
    out.append(jnp.where(m > 0, seg.deviation(v, mo, offset) * seg.take(scale), 0.0))
    squares.append(seg_lib.pairwise_sum(
        jnp.square(scale) * (mo.m2 + mo.count * jnp.square(mo.offset - offset))))
  return (out, squares) if square_sums else out


def batch_moments(mo: Moments) -> Moments:
  """Moments of the whole batch from (global) per-group moments, exactly."""
  return seg_lib.merge(mo, jnp.zeros(mo.count.shape, jnp.int32), 1,
                       lambda xs: [seg_lib.pairwise_sum(x)[None] for x in xs],
                       lambda x: jnp.max(x)[None])


def standardize(values: Array, mask: Array, seg: Segmentation, *, ddof: int = 0,
                eps: float = 1e-6, keep_zeros: bool = False,
                moments: Optional[Moments] = None) -> Array:
  """(x - mean_s) / (std_s + eps) per segment on rows with mask > 0, else 0.

  A segment without spread gives 0. `keep_zeros`: rows with x == 0 stay 0.
  For advantages that is the maths: every estimator here gives each group
  advantages that sum to 0, so the segment mean is 0 in exact arithmetic and
  0 maps to 0; in float32 the mean is rounding noise that would turn "no
  signal" (a group without spread) into a small signal of its sign. (With
  `singleton='raw'` a lone rollout's A = r is not centred: there the rule is
  a choice, 0 stays 0.) `moments`: the segments' `Moments` of `values`, if
  already computed.
  """
  out = estimate([values], [mask], seg, ddof=ddof, eps=eps,
                 moments=None if moments is None else [moments])[0]
  return jnp.where(values != 0, out, 0.0) if keep_zeros else out


# ------------------------------------------------------ group statistics
@_jit("num_groups", "ddof", "axis_name", "group_size")
def group_stats(values: Array, group_ids: Array, num_groups: int,
                mask: Optional[Array] = None, *, ddof: int = 0,
                axis_name: Optional[str] = None,
                group_size: Optional[int] = None) -> seg_lib.SegmentStats:
  """Per-group masked mean, std (with `ddof`) and count, `[G]` or `[G, K]`.

  `values [N]` or `[N, K]`; a group with count <= ddof or without spread
  gets std 0 (exactly).
  """
  values = jnp.asarray(values, jnp.float32)
  n = values.shape[0]
  group_ids = check_ids("group_ids", group_ids, n, num_groups)
  seg = seg_lib.group_segmentation(group_ids, num_groups, group_size, axis_name)
  return seg_lib.segment_stats(values, group_ids, num_groups, as_mask(mask, n),
                               ddof=ddof, segmentation=seg)


@_jit("num_groups", "std_scaling", "ddof", "eps", "singleton", "axis_name",
      "group_size")
def grpo_advantages(rewards: Array, group_ids: Array, num_groups: int,
                    mask: Optional[Array] = None, *, std_scaling: str = "group",
                    ddof: int = 0, eps: float = 1e-6, singleton: str = "zero",
                    axis_name: Optional[str] = None,
                    group_size: Optional[int] = None) -> Array:
  """GRPO group-relative advantages (and Dr. GRPO with `std_scaling='none'`).

    A_i = (r_i - mean_{g(i)}(r)) / (s_i + eps)
    s_i = std_{g(i)}(r)  ('group', GRPO / TRL / verl),
          std_batch(r)   ('batch', TRL `scale_rewards='batch'`),
          1              ('none', Dr. GRPO)

  Args:
    rewards: `[N]` scalar rewards.
    group_ids: `[N]` int group of each rollout, in [0, num_groups).
    num_groups: static number of groups.
    mask: `[N]` validity; padding rows get 0.
    std_scaling: 'group' | 'batch' | 'none'.
    ddof: of the std (0 numpy/JAX; 1 torch, TRL, verl).
    eps: added to the std (TRL 1e-4, verl/tunix 1e-6, OpenRLHF 1e-9).
    singleton: a one-member group gets 0 ('zero') or r / (1 + eps) ('raw',
      verl's loop).
    axis_name: mapped axis to reduce the statistics over.
    group_size: the layout (module docstring): None or a static int G.

  Returns:
    `[N]` float32. A group without spread gives exactly 0; rows that are
    masked, non-finite or in an out-of-range group give 0.
  """
  check_choices("grpo", std_scaling, singleton)
  return _scalar_estimate(rewards, group_ids, num_groups, mask, axis_name,
                          group_size, estimator="grpo", std_scaling=std_scaling,
                          ddof=ddof, eps=eps, singleton=singleton)


@_jit("num_groups", "singleton", "axis_name", "group_size")
def rloo_advantages(rewards: Array, group_ids: Array, num_groups: int,
                    mask: Optional[Array] = None, *, singleton: str = "zero",
                    axis_name: Optional[str] = None,
                    group_size: Optional[int] = None) -> Array:
  """REINFORCE leave-one-out advantages.

    A_i = r_i - (sum_{j in g(i), j != i} r_j) / (n_g - 1)
        = n_g / (n_g - 1) * (r_i - mean_g(r))

  A one-member group gets 0 ('zero': TRL, verl's vectorised RLOO) or r_i
  ('raw': verl's loop). Args / returns: as `grpo_advantages`.
  """
  check_choices("rloo", "group", singleton)
  return _scalar_estimate(rewards, group_ids, num_groups, mask, axis_name,
                          group_size, estimator="rloo", singleton=singleton)


def _scalar_estimate(rewards, group_ids, num_groups, mask, axis_name,
                     group_size, **kwargs) -> Array:
  rewards = check_rewards(rewards, 1)
  n = rewards.shape[0]
  group_ids = check_ids("group_ids", group_ids, n, num_groups)
  seg = seg_lib.group_segmentation(group_ids, num_groups, group_size, axis_name)
  valid = valid_rows(rewards, as_mask(mask, n), seg)
  return estimate([rewards], [valid], seg, **kwargs)[0]


@_jit("ddof", "eps", "axis_name", "keep_zeros")
def whiten(values: Array, mask: Optional[Array] = None, *, ddof: int = 0,
           eps: float = 1e-6, axis_name: Optional[str] = None,
           keep_zeros: bool = False) -> Array:
  """Batch whitening: (x - mean_batch) / (std_batch + eps) over valid rows.

  `values [N]`; padding rows get 0; `keep_zeros` as in `standardize` (GDPO
  and ReCal whiten advantages with it). verl whitens with rsqrt(var + 1e-8)
  and a token-weighted variance; TRL's normalize-then-sum adds 1e-4.
  """
  values = check_rewards(values, 1, "values")
  n = values.shape[0]
  return standardize(values, as_mask(mask, n), WholeBatch((n,), axis_name),
                     ddof=ddof, eps=eps, keep_zeros=keep_zeros)


# --------------------------------------------- component-wise advantages
@_jit("num_groups", "conditional", "estimator", "std_scaling", "ddof", "eps",
      "singleton", "axis_name", "group_size")
def componentwise_advantages(rewards: Array, group_ids: Array, num_groups: int,
                             mask: Optional[Array] = None, *,
                             gate: Optional[Array] = None,
                             conditional: bool = True,
                             estimator: str = "grpo",
                             std_scaling: str = "group", ddof: int = 0,
                             eps: float = 1e-6, singleton: str = "zero",
                             axis_name: Optional[str] = None,
                             group_size: Optional[int] = None) -> Array:
  """Per-component group advantages `A[i, k]` (GDPO-style, not on the sum).

    A[i, k] = (r[i, k] - mean_g(r[., k])) / (std_g(r[., k]) + eps)

  With a `gate [N, K]` and `conditional=True` the statistics of component k
  use only the group's members whose gate passed, and A[i, k] = 0 where
  gate[i, k] = 0 (a format failure is blamed on format alone). With
  `conditional=False` the gate is ignored (pass gated rewards in). All K
  components are reduced together.

  Args:
    rewards: `[N, K]` (gated) components.
    gate: `[N, K]` 0/1, or None.
    estimator: 'grpo' or 'rloo'; the other arguments as `grpo_advantages`.

  Returns:
    `[N, K]` float32; exactly 0 in a component without spread in a group.
  """
  check_choices(estimator, std_scaling, singleton)
  rewards = check_rewards(rewards, 2)
  n, k = rewards.shape
  group_ids = check_ids("group_ids", group_ids, n, num_groups)
  seg = seg_lib.group_segmentation(group_ids, num_groups, group_size, axis_name)
  valid = valid_rows(rewards, as_mask(mask, n), seg)
  members = [valid] * k
  if gate is not None:
    gate = jnp.asarray(gate, jnp.float32)
    if gate.shape != (n, k):
      raise ValueError(f"gate must have shape [N, K]=({n}, {k}), got {gate.shape}")
    if conditional:
      members = [valid * g for g in columns(gate)]
  return jnp.stack(estimate(columns(rewards), members, seg, estimator=estimator,
                            std_scaling=std_scaling, ddof=ddof, eps=eps,
                            singleton=singleton), axis=1)


def weighted_sum(cols: Sequence[Array], weights: Sequence[float]) -> Array:
  """sum_k w_k x_k over row-wise columns (terms with w_k = 0 left out)."""
  terms = [float(w) * c for c, w in zip(cols, weights) if float(w) != 0.0]
  return functools.reduce(jnp.add, terms) if terms else jnp.zeros_like(cols[0])


@_jit("num_groups", "component_weights", "ddof", "eps", "singleton",
      "whiten_sum", "whiten_eps", "axis_name", "group_size")
def gdpo_advantages(rewards: Array, group_ids: Array, num_groups: int,
                    mask: Optional[Array] = None, *,
                    component_weights: Optional[tuple[float, ...]] = None,
                    ddof: int = 0, eps: float = 1e-6, singleton: str = "zero",
                    whiten_sum: bool = True, whiten_eps: Optional[float] = None,
                    axis_name: Optional[str] = None,
                    group_size: Optional[int] = None) -> Array:
  """GDPO: normalise each component within its group, sum, then whiten.

    A_k[i] = (r[i,k] - mean_g r[.,k]) / (std_g r[.,k] + eps)
    S[i]   = sum_k w_k A_k[i]
    A[i]   = (S[i] - mean_batch S) / (std_batch S + whiten_eps)   (whiten_sum)

  No gating. With ddof=1 and eps = whiten_eps = 1e-4 this is NVlabs GDPO /
  TRL's `normalize_then_sum`; `singleton='raw'` gives a one-member group its
  raw components (verl's GDPO: mean 0, std 1). Rows with S = 0 (a group
  without spread in any component) stay 0 through the whitening
  (`standardize`). Returns `[N]` float32.
  """
  rewards = check_rewards(rewards, 2)
  n, k = rewards.shape
  weights = tuple(component_weights) if component_weights is not None else (1.0,) * k
  if len(weights) != k:
    raise ValueError(f"component_weights must have K={k} entries, got {len(weights)}")
  per = componentwise_advantages(rewards, group_ids, num_groups, mask, ddof=ddof,
                                 eps=eps, singleton=singleton, axis_name=axis_name,
                                 group_size=group_size)
  total = weighted_sum(columns(per), weights)
  if not whiten_sum:
    return total
  group_ids = check_ids("group_ids", group_ids, n, num_groups)
  seg = seg_lib.group_segmentation(group_ids, num_groups, group_size, axis_name)
  valid = valid_rows(rewards, as_mask(mask, n), seg)
  return whiten(total, valid, ddof=ddof, eps=eps if whiten_eps is None else whiten_eps,
                axis_name=axis_name, keep_zeros=True)
