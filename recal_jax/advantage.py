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

Speed: the usual layout, `group_ids = repeat(arange(B), G)` (every group G
contiguous rows, in order) with each group inside one dataset, has a fast
path in `recal_advantages` and `grpo_advantages` (`group_size`, "auto" by
default): group sums are strided adds over the `[B, G]` view of the rows,
dataset sums go through the B group sums, and per-group values are read
back by a broadcast, with no scatter or gather over the N rows. The layout
is checked at run time (one pass over the ids) and any other layout takes
the general path (scatter-adds), so the result never depends on the layout,
only the speed (and float rounding).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from recal_jax import calibration
from recal_jax import rewards as rewards_lib
from recal_jax import segments as segments_lib
from recal_jax.segments import (ContiguousSegments, Moments, NestedSegments,
                                ScatterSegments, Segmentation, SegmentStats,
                                WholeBatch, segment_stats)

Array = jax.Array

STD_SCALINGS = ("group", "batch", "none")
SINGLETON_RULES = ("zero", "raw")
ESTIMATORS = ("grpo", "rloo")
GroupSize = Union[int, str, None]


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


def _check_choices(std_scaling: str, singleton: str) -> None:
  if std_scaling not in STD_SCALINGS:
    raise ValueError(f"std_scaling must be one of {STD_SCALINGS}, got {std_scaling!r}")
  if singleton not in SINGLETON_RULES:
    raise ValueError(f"singleton must be one of {SINGLETON_RULES}, got {singleton!r}")


def _columns(x: Array) -> list[Array]:
  return [x] if x.ndim == 1 else [x[:, k] for k in range(x.shape[1])]


def _all_finite(columns: Sequence[Array]) -> Array:
  """Row-wise float 1/0: every column finite (no reduce over a minor axis)."""
  finite = jnp.isfinite(columns[0])
  for c in columns[1:]:
    finite = finite & jnp.isfinite(c)
  return finite.astype(jnp.float32)


def _in_range(seg: Segmentation):
  ok = seg.in_range()
  return 1.0 if ok is None else ok.astype(jnp.float32)


def _valid_rows(rewards: Array, ids: Array, num: int, mask: Array) -> Array:
  """Mask of rows that are valid, finite and whose id is in range."""
  finite = _all_finite(_columns(rewards))
  in_range = (ids >= 0) & (ids < num)
  return mask * finite * in_range.astype(mask.dtype)


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


# ------------------------------------------------------ layout fast path
class _Layout(NamedTuple):
  ok: Array  # bool scalar: the ids follow the contiguous layout
  size: int  # G, rows per group (static)
  first: Optional[Array]  # group id of the first block, None if static 0
  coarse: Optional[Array]  # [N / G] dataset id of each block, or None


def _contiguous_layout(group_ids: Array, num_groups: int, given: Array,
                       group_size: GroupSize, axis_name: Optional[str],
                       dataset_ids: Optional[Array] = None) -> Optional[_Layout]:
  """Static set-up and run-time check of the `[N / G, G]` fast path.

  `group_size`: "auto" (G = N / num_groups when that divides and there is no
  `axis_name`), an int G (the caller's expected layout, still checked; works
  under `shard_map`), or None (never: always the general path). Returns None
  when no fast path applies statically; else `_Layout`, whose `ok` is true iff
  every row with mask > 0 has `group_ids[i] == first + i // G`, the blocks
  [first, first + N / G) lie in [0, num_groups), and (with `dataset_ids`)
  every such row of a block has the dataset id of the block's first row.
  Rows with mask 0 may hold any ids. Under `axis_name`, `ok` is the AND over
  devices, so every device takes the same branch.
  """
  n = group_ids.shape[0]
  if group_size is None:
    return None
  if isinstance(group_size, str):
    if group_size != "auto":
      raise ValueError(f"group_size must be 'auto', an int or None, got {group_size!r}")
    if axis_name is not None or n == 0 or n % num_groups:
      return None
    size = n // num_groups
  else:
    if (isinstance(group_size, bool) or not isinstance(group_size, (int, np.integer))
        or group_size < 1):
      raise ValueError(f"group_size must be 'auto', a positive int or None, got {group_size!r}")
    size = int(group_size)
    if n % size:
      raise ValueError(f"group_size={size} does not divide the batch N={n}")
  num_local = n // size
  if num_local > num_groups:
    return None  # more blocks than groups: the layout cannot hold
  ids = group_ids.reshape(num_local, size)
  live = given.reshape(num_local, size) > 0
  first = ids[0, 0]
  good = ids == first + jnp.arange(num_local, dtype=ids.dtype)[:, None]
  coarse = None
  if dataset_ids is not None:
    dids = dataset_ids.reshape(num_local, size)
    coarse = dids[:, 0]
    good = good & (dids == coarse[:, None])
  ok = jnp.all(good | ~live) & (first >= 0) & (first + num_local <= num_groups)
  if axis_name is not None:
    ok = jax.lax.pmin(ok.astype(jnp.int32), axis_name) > 0
  static = axis_name is None and num_local == num_groups
  return _Layout(ok=ok, size=size, first=None if static else first, coarse=coarse)


# ------------------------------------------------ estimators on moments
def _center_scale(mo: Moments, *, estimator: str = "grpo",
                  std_scaling: str = "group", ddof: int = 0, eps: float = 1e-6,
                  singleton: str = "zero") -> tuple[Array, Array]:
  """Per-segment `(center, scale)`: A = (x - center) * scale on member rows.

  GRPO: center = mean, scale = 1 / (s + eps) with s the group std, the batch
  std, or 1. RLOO: A = n / (n - 1) (x - mean). A one-member group: center 0
  and scale 1 / (1 + eps) (GRPO) or 1 (RLOO) for `singleton='raw'`, else
  scale 0.
  """
  count = mo.count
  lone_scale = 0.0
  if estimator == "grpo":
    if std_scaling == "group":
      s = jnp.sqrt(mo.var(ddof))
    elif std_scaling == "batch":
      s = jnp.broadcast_to(jnp.sqrt(_batch_moments(mo).var(ddof)), count.shape)
    else:
      s = jnp.ones_like(count)
    center, scale = mo.mean, 1.0 / (s + eps)
    if singleton == "zero":
      return center, scale
    lone = count == 1
    return jnp.where(lone, 0.0, center), jnp.where(lone, 1.0 / (1.0 + eps), scale)
  if singleton == "raw":
    lone_scale = 1.0
  many = count > 1
  return (jnp.where(many, mo.mean, 0.0),
          jnp.where(many, count / jnp.maximum(count - 1.0, 1.0), lone_scale))


def _batch_moments(mo: Moments) -> Moments:
  """Moments of the whole batch from per-segment moments (exact merge)."""
  return segments_lib._merge(  # pylint: disable=protected-access
      [mo], lambda xs: [jnp.sum(x, keepdims=True) for x in xs], lambda t: t)[0]


def _apply(values: Array, member: Array, seg: Segmentation, center: Array,
           scale: Array) -> Array:
  """(x - center[s(i)]) * scale[s(i)] on member rows, 0 elsewhere."""
  return jnp.where(member > 0, (values - seg.take(center)) * seg.take(scale), 0.0)


def _sum_sq(mo: Moments, center: Array, scale: Array) -> Array:
  """sum over member rows of ((x - center) * scale)^2, per segment, exactly."""
  d = mo.mean - center
  return scale * scale * (mo.m2 + 2.0 * d * (mo.total - mo.count * mo.mean)
                          + mo.count * d * d)


def _estimate(values: Array, member: Array, seg: Segmentation,
              **kwargs) -> Array:
  mo = seg.moments([values], [member])[0]
  return _apply(values, member, seg, *_center_scale(mo, **kwargs))


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


# ---------------------------------------------------- scalar estimators
def grpo_advantages(rewards: Array, group_ids: Array, num_groups: int,
                    mask: Optional[Array] = None, *, std_scaling: str = "group",
                    ddof: int = 0, eps: float = 1e-6, singleton: str = "zero",
                    axis_name: Optional[str] = None,
                    group_size: GroupSize = "auto") -> Array:
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
    group_size: the contiguous-layout fast path (module docstring): "auto",
      an int rows-per-group, or None (always the general path). Only speed
      depends on it.

  Returns:
    `[N]` float32 advantages. A zero-spread group gives A = 0; rows that are
    masked, non-finite or have an out-of-range group id give 0.
  """
  _check_choices(std_scaling, singleton)
  rewards = _check_rewards(rewards, 1)
  n = rewards.shape[0]
  group_ids = _check_ids("group_ids", group_ids, n, num_groups)
  given = _as_mask(mask, n)
  kwargs = dict(estimator="grpo", std_scaling=std_scaling, ddof=ddof, eps=eps,
                singleton=singleton)

  def run(r, given, seg):
    valid = given * _all_finite([r]) * _in_range(seg)
    return _estimate(r, valid, seg, **kwargs)

  def general():
    return run(rewards, given, ScatterSegments(group_ids, num_groups, axis_name))

  layout = _contiguous_layout(group_ids, num_groups, given, group_size, axis_name)
  if layout is None:
    return general()

  def fast():
    shape = (n // layout.size, layout.size)
    seg = ContiguousSegments(num_groups, shape, layout.first, axis_name)
    return run(rewards, given, seg)

  return jax.lax.cond(layout.ok, fast, general)


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
  return _estimate(rewards, mask, ScatterSegments(group_ids, num_groups, axis_name),
                   estimator="rloo", singleton=singleton)


def whiten(values: Array, mask: Optional[Array] = None, *, ddof: int = 0,
           eps: float = 1e-6, axis_name: Optional[str] = None) -> Array:
  """Batch whitening: (x - mean_batch) / (std_batch + eps) over valid rows.

  `values [N]`; padding rows get 0. (verl whitens with rsqrt(var + 1e-8) and a
  token-weighted variance; TRL's normalize-then-sum adds 1e-4 to the std.)
  """
  values = _check_rewards(values, 1, "values")
  n = values.shape[0]
  mask = _as_mask(mask, n)
  return _estimate(values, mask, WholeBatch((n,), axis_name), ddof=ddof, eps=eps)


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


def _pack(bools: Sequence[Array]) -> Array:
  """Row-wise booleans packed into one uint8 (or int32) row array.

  XLA materialises a row mask that several loops read; packed, that is one
  byte a row instead of a float32 array per mask (measured faster).
  """
  dtype = jnp.uint8 if len(bools) <= 8 else jnp.int32
  packed = bools[0].astype(dtype)
  for i, b in enumerate(bools[1:], start=1):
    packed = packed | (b.astype(dtype) << i)
  return packed


def _unpack(packed: Array, count: int) -> list[Array]:
  one = jnp.asarray(1, packed.dtype)
  return [((packed >> i) & one).astype(jnp.float32) for i in range(count)]


def _gate_columns(columns: Sequence[Array], hierarchy: Hierarchy,
                  passes: Optional[Sequence[Optional[Array]]] = None
                  ) -> tuple[list[Array], list[Array]]:
  """`hierarchical_gate` on a list of K row-wise columns (any row shape).

  `passes` (float 0/1 per component, None where there is no threshold) may
  be given precomputed.
  """
  if passes is None:
    passes = [None if threshold is None else (c >= threshold).astype(jnp.float32)
              for c, threshold in zip(columns, hierarchy.thresholds)]
  gates, gated = [], []
  for c in range(len(columns)):  # K is small and static: unrolled at trace time.
    gate = jnp.ones(columns[c].shape, jnp.float32)
    for j in hierarchy.ancestors(c):
      if passes[j] is not None:
        gate = gate * passes[j]
    gates.append(gate)
    fail = hierarchy.fail_values[c]
    gated.append(gate * columns[c] + (1.0 - gate) * fail)
  return gates, gated


def _check_hierarchy(k: int, hierarchy: Hierarchy) -> None:
  if k != hierarchy.num_components:
    raise ValueError(f"rewards has K={k} components, the hierarchy has "
                     f"{hierarchy.num_components} {hierarchy.names}")


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
  _check_hierarchy(rewards.shape[1], hierarchy)
  gates, gated = _gate_columns(_columns(rewards.astype(jnp.float32)), hierarchy)
  return jnp.stack(gates, axis=1), jnp.stack(gated, axis=1)


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

  All K components are reduced together (stacked into one scatter per pass).

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
  _check_choices(std_scaling, singleton)
  rewards = _check_rewards(rewards, 2)
  n, k = rewards.shape
  group_ids = _check_ids("group_ids", group_ids, n, num_groups)
  row_mask = _valid_rows(rewards, group_ids, num_groups, _as_mask(mask, n))
  members = [row_mask] * k
  if gate is not None:
    gate = jnp.asarray(gate, jnp.float32)
    if gate.shape != (n, k):
      raise ValueError(f"gate must have shape [N, K]=({n}, {k}), got {gate.shape}")
    if conditional:
      members = [row_mask * g for g in _columns(gate)]
  seg = ScatterSegments(group_ids, num_groups, axis_name)
  columns = _columns(rewards.astype(jnp.float32))
  moments = seg.moments(columns, members)
  kwargs = dict(estimator=estimator, std_scaling=std_scaling, ddof=ddof, eps=eps,
                singleton=singleton)
  return jnp.stack([_apply(c, m, seg, *_center_scale(mo, **kwargs))
                    for c, m, mo in zip(columns, members, moments)], axis=1)


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
  weights = tuple(component_weights) if component_weights is not None else (1.0,) * k
  if len(weights) != k:
    raise ValueError(f"component_weights must have K={k} entries, got {len(weights)}")
  per = componentwise_advantages(rewards, group_ids, num_groups, mask, ddof=ddof,
                                 eps=eps, axis_name=axis_name)
  total = sum(float(w) * per[:, j] for j, w in enumerate(weights))
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
                     axis_name: Optional[str] = None,
                     group_size: GroupSize = "auto") -> ReCalOutput:
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

  Cost: the statistics of each stage are reduced together (strided adds on
  the fast path, stacked scatter-adds otherwise: a sum pass, then a centred
  pass), and the diagnostics are derived from those per-group / per-dataset
  moments instead of being recomputed; see experiments/benchmarks/RESULTS.md.

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
    group_size: the contiguous-layout fast path (module docstring). "auto"
      (default) tries it when `num_groups` divides N and there is no
      `axis_name`; an int G tries it with G rows per group (also under
      `shard_map`); None never does. The fast path is taken only if, at run
      time, every row with mask > 0 has `group_ids[i] == group_ids[0] + i // G`
      and the dataset id of its block's first row; otherwise the general
      path runs. The values do not depend on it (up to float rounding).

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
  given = _as_mask(mask, n)
  if len(config.component_weights) != k:
    raise ValueError(f"config.component_weights has {len(config.component_weights)} "
                     f"entries for K={k} components")
  if config.reward == "components" and config.hierarchy is not None:
    _check_hierarchy(k, config.hierarchy)
  if config.dataset_norm == "running" and dataset_state is None:
    raise ValueError("config.dataset_norm='running' needs a dataset_state "
                     "(calibration.init_dataset_stats(num_datasets))")
  components = components.astype(jnp.float32)

  def general():
    def core(components, given, group_ids, dataset_ids, dataset_state):
      return _recal_core(
          [components[:, j] for j in range(k)], given,
          ScatterSegments(group_ids, num_groups, axis_name),
          ScatterSegments(dataset_ids, num_datasets, axis_name),
          WholeBatch((n,), axis_name), config, dataset_state)
    return core(components, given, group_ids, dataset_ids, dataset_state)

  layout = _contiguous_layout(group_ids, num_groups, given, group_size,
                              axis_name, dataset_ids)
  if layout is None:
    return ReCalOutput(*general())

  def fast():
    shape = (n // layout.size, layout.size)

    def core(components, given, first, coarse, dataset_state):
      groups = ContiguousSegments(num_groups, shape, first, axis_name)
      return _recal_core(
          [components[:, j] for j in range(k)], given, groups,
          NestedSegments(groups, coarse, num_datasets, axis_name),
          WholeBatch((n,), axis_name), config, dataset_state)
    return core(components, given, layout.first, layout.coarse, dataset_state)

  return ReCalOutput(*jax.lax.cond(layout.ok, fast, general))


def _recal_core(columns: list[Array], given: Array, groups: Segmentation,
                datasets: Segmentation, batch: Segmentation,
                config: ReCalConfig,
                dataset_state: Optional[calibration.RunningDatasetStats]):
  """`recal_advantages` on K row-wise columns, for one layout.

  Rows have any shape (`[N]` with scatter segments, `[N / G, G]` with the
  contiguous ones); `groups`, `datasets` and `batch` say how they reduce.
  Returns `(advantages, weights, diagnostics, dataset_state)` row-shaped.
  """
  k = len(columns)
  eps, ddof = config.eps, config.ddof
  ok = (_all_finite(columns) * _in_range(groups) * _in_range(datasets)) > 0
  valid = given * _unpack(_pack([ok]), 1)[0]
  raw = [jnp.where(valid > 0, c, 0.0) for c in columns]

  # Stage 0: per-dataset standardisation of continuous raw components.
  r = list(raw)
  norm_cols = tuple(config.dataset_norm_components)
  if norm_cols:
    moments = datasets.moments([raw[j] for j in norm_cols], [valid] * len(norm_cols))
    for j, mo in zip(norm_cols, moments):
      stats = mo.stats(ddof)
      r[j] = _apply(raw[j], valid, datasets, stats.mean, 1.0 / (stats.std + eps))

  # Stage 1, with the group statistics of the variance component (stage 2)
  # and the whole-batch sums of the diagnostics in the same reduction.
  estimator = dict(estimator=config.estimator, std_scaling=config.std_scaling,
                   ddof=ddof, eps=eps, singleton=config.singleton)
  weights_k = config.component_weights
  totals_of = [given] + raw
  diagnostics = {}
  if config.reward == "components":
    gates = None
    if config.hierarchy is not None:
      thresholds = config.hierarchy.thresholds
      gated_on = [j for j in range(k) if thresholds[j] is not None]
      gates, r = _gate_columns(r, config.hierarchy)
    if gates is not None and config.conditional:
      members = [valid * g for g in gates]
    else:
      members = [valid] * k
    gate_sums = [] if gates is None or config.conditional else [valid * g for g in gates]
    moments, totals = groups.moments_and_totals(
        r + [raw[config.variance_component]], members + [valid],
        totals_of + gate_sums)
    spread_moments = moments[k]
    counts = jnp.sum(spread_moments.count)
    denom = jnp.maximum(counts, 1.0)
    adv = 0.0
    adv_sq = []
    for j in range(k):
      center, scale = _center_scale(moments[j], **estimator)
      adv = adv + float(weights_k[j]) * _apply(r[j], members[j], groups, center, scale)
      adv_sq.append(jnp.sum(_sum_sq(moments[j], center, scale)))
    if gates is None:
      diagnostics["gate_pass_rate"] = jnp.ones((k,), jnp.float32)
    elif config.conditional:
      diagnostics["gate_pass_rate"] = jnp.stack(
          [jnp.sum(mo.count) for mo in moments[:k]]) / denom
    else:
      diagnostics["gate_pass_rate"] = jnp.stack(totals[1 + k:]) / denom
    diagnostics["component_adv_std"] = jnp.sqrt(jnp.stack(adv_sq) / denom)
  else:
    if config.reward == "sum":
      scalar = sum(float(w) * c for w, c in zip(weights_k, r))
    else:
      scalar = rewards_lib.router_r1_reward(
          jnp.stack(r, axis=-1), cost_weight=config.router_r1_cost_weight,
          correct_threshold=config.correct_threshold)
    moments, totals = groups.moments_and_totals(
        [scalar, raw[config.variance_component]], [valid, valid], totals_of)
    spread_moments = moments[1]
    counts = jnp.sum(spread_moments.count)
    denom = jnp.maximum(counts, 1.0)
    adv = _apply(scalar, valid, groups, *_center_scale(moments[0], **estimator))
  diagnostics["invalid_rows"] = totals[0] - counts
  diagnostics["component_mean"] = jnp.stack(totals[1:1 + k]) / denom
  if config.whiten:
    adv = _estimate(adv, valid, batch, ddof=ddof, eps=eps)

  # Stage 2: variance-aware group weights.
  spread = calibration.spread_from_moments(
      spread_moments, h=config.variance_h, power=config.variance_power)
  group_present = spread.count > 0
  diagnostics["zero_spread_groups"] = (
      jnp.sum((spread.h <= 0) & group_present) / jnp.maximum(jnp.sum(group_present), 1))
  omega = None
  if config.variance_weighting:
    omega = calibration.variance_weights_from_spread(
        spread, w_min=config.weight_min, w_max=config.weight_max)

  # Stage 2: per-dataset normalisation of the advantages (one reduction for
  # the normalisation, the running statistics and the diagnostics).
  ds = datasets.moments([adv], [valid])[0]
  weights = valid if omega is None else groups.take(omega) * valid
  if config.balance_datasets:
    present = jnp.sum(ds.count > 0)
    balance = jnp.sum(ds.count) / (jnp.maximum(present, 1) * jnp.maximum(ds.count, 1.0))
    weights = weights * datasets.take(balance)
    if omega is None:
      weight_total = jnp.sum(balance * ds.count)
    else:
      weight_total = batch.sums([weights])[0][0]
  elif omega is None:
    weight_total = counts
  else:
    weight_total = jnp.sum(omega * spread.count)
  new_state = dataset_state
  ds_std = jnp.sqrt(ds.var(0))
  if config.dataset_norm == "none":
    adv = jnp.where(valid > 0, adv, 0.0)
    adv_mean, adv_std = ds.mean, ds_std
  else:
    if config.dataset_norm == "batch":
      stats = ds.stats(ddof)
      center, scale = stats.mean, 1.0 / (stats.std + eps)
    else:
      new_state = calibration.update_dataset_stats_from_moments(
          dataset_state, ds, decay=config.running_decay)
      mean, std = calibration.running_mean_std(new_state)
      center, scale = mean, 1.0 / (std + eps)
    adv = _apply(adv, valid, datasets, center, scale)
    # The normalisation is affine per dataset: the statistics of Ahat follow.
    adv_mean = jnp.where(ds.count > 0, (ds.mean - center) * scale, 0.0)
    adv_std = ds_std * scale
  diagnostics.update(dataset_count=ds.count, dataset_adv_mean=adv_mean,
                     dataset_adv_std=adv_std, weight_mean=weight_total / denom)
  return adv, weights, diagnostics, new_state
