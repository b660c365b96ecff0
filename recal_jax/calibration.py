"""Distribution-aware calibration (METHOD.md, stage 2).

Three pieces, each a pure function over flat batches:

* Variance-aware group weights: groups whose primary reward has no spread
  (every rollout right, or every one wrong) teach nothing about which route is
  better, and uncertain queries teach most:

    omega[g] = clip(h_g / mean_{g' present} h_{g'}, w_min, w_max)
    h_g = std_g                   ('std')
        = sqrt(p_g (1 - p_g))     ('bernoulli', p_g the group mean, clipped to [0, 1])
        = std_g ** power          ('power')

  If no group in the batch has any spread (the mean of h is 0) every weight
  is 1: there is nothing to reweight by.

* Per-dataset normalisation: `Ahat[i] = (A[i] - mu[d(i)]) / (sigma[d(i)] + eps)`
  with `mu, sigma` from the batch (`dataset_normalize`) or from running
  statistics (`running_dataset_stats`: an `(init, update)` pair, rlax/acme
  style, with debiasing of early steps and an optional cross-device
  reduction). A dataset absent from the batch is left untouched; a dataset
  seen with a single row normalises to 0.

* Dataset-balancing weights: `b[i] = n_valid / (D_present * n[d(i)])`, so
  each dataset present in the batch contributes the same total weight.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from recal_jax.segments import Moments, ScatterSegments, segment_stats, segment_sum

Array = jax.Array

VARIANCE_H = ("std", "bernoulli", "power")


class GroupSpread(NamedTuple):
  h: Array  # [G] float32, h(spread) per group, 0 for absent groups
  count: Array  # [G] float32, valid members per group


def group_spread(values: Array, group_ids: Array, num_groups: int,
                 mask: Array, *, h: str = "bernoulli", power: float = 1.0,
                 ddof: int = 0, axis_name: Optional[str] = None) -> GroupSpread:
  """h(spread) of `values [N]` per group -> `GroupSpread(h [G], count [G])`.

  `h` is one of `VARIANCE_H` (see the module docstring).
  """
  if h not in VARIANCE_H:
    raise ValueError(f"h must be one of {VARIANCE_H}, got {h!r}")
  moments = ScatterSegments(jnp.asarray(group_ids, jnp.int32), num_groups,
                            axis_name).moments(
      [jnp.asarray(values, jnp.float32)], [jnp.asarray(mask, jnp.float32)])[0]
  return spread_from_moments(moments, h=h, power=power, ddof=ddof)


def spread_from_moments(moments: Moments, *, h: str = "bernoulli",
                        power: float = 1.0, ddof: int = 0) -> GroupSpread:
  """`GroupSpread` from per-group `segments.Moments` of the primary reward."""
  if h not in VARIANCE_H:
    raise ValueError(f"h must be one of {VARIANCE_H}, got {h!r}")
  stats = moments.stats(ddof)
  if h == "std":
    spread = stats.std
  elif h == "bernoulli":
    p = jnp.clip(stats.mean, 0.0, 1.0)
    spread = jnp.sqrt(p * (1.0 - p))
  else:
    spread = stats.std ** power
  return GroupSpread(h=jnp.where(stats.count > 0, spread, 0.0), count=stats.count)


def variance_weights_from_spread(spread: GroupSpread, *, w_min: float = 0.1,
                                 w_max: float = 3.0) -> Array:
  """omega `[G]` = clip(h_g / mean of h over present groups, w_min, w_max).

  Absent groups get 0; if every present group has h = 0, present groups get 1.
  """
  present = spread.count > 0
  mean_h = jnp.sum(jnp.where(present, spread.h, 0.0)) / jnp.maximum(jnp.sum(present), 1)
  omega = jnp.where(mean_h > 0,
                    jnp.clip(spread.h / jnp.where(mean_h > 0, mean_h, 1.0), w_min, w_max),
                    1.0)
  return jnp.where(present, omega, 0.0)


def variance_weights(values: Array, group_ids: Array, num_groups: int,
                     mask: Optional[Array] = None, *, h: str = "bernoulli",
                     power: float = 1.0, w_min: float = 0.1, w_max: float = 3.0,
                     ddof: int = 0, axis_name: Optional[str] = None
                     ) -> tuple[Array, Array]:
  """Variance-aware weights from the spread of the primary reward.

  Args:
    values: `[N]` primary reward (correctness by default in ReCal).
    group_ids: `[N]` int group ids in [0, num_groups).
    num_groups: static G.
    mask: `[N]` validity (default all valid).
    h, power: the spread function (module docstring).
    w_min, w_max: clip range of the weights.
    ddof: of the group std for 'std' / 'power'.
    axis_name: mapped axis to reduce over.

  Returns:
    `(per_rollout [N], per_group [G])`: omega[g(i)] on valid rows (0 on
    padding), and omega per group (0 for absent groups).
  """
  values = jnp.asarray(values, jnp.float32)
  n = values.shape[0]
  mask = jnp.ones((n,), jnp.float32) if mask is None else jnp.asarray(mask, jnp.float32)
  group_ids = jnp.asarray(group_ids, jnp.int32)
  if values.shape != (n,) or mask.shape != (n,) or group_ids.shape != (n,):
    raise ValueError(f"values, mask and group_ids must all be [N]; got "
                     f"{values.shape}, {mask.shape}, {group_ids.shape}")
  spread = group_spread(values, group_ids, num_groups, mask, h=h, power=power,
                        ddof=ddof, axis_name=axis_name)
  omega = variance_weights_from_spread(spread, w_min=w_min, w_max=w_max)
  return omega[group_ids] * mask, omega


def dataset_normalize(values: Array, dataset_ids: Array, num_datasets: int,
                      mask: Optional[Array] = None, *, eps: float = 1e-6,
                      ddof: int = 0, axis_name: Optional[str] = None) -> Array:
  """Standardise `values [N]` or `[N, K]` per dataset with batch statistics.

    out[i] = (x[i] - mean_{d(i)}(x)) / (std_{d(i)}(x) + eps)

  Padding rows get 0; a dataset with one valid row gets 0 (no spread).
  """
  values = jnp.asarray(values, jnp.float32)
  n = values.shape[0]
  mask = jnp.ones((n,), jnp.float32) if mask is None else jnp.asarray(mask, jnp.float32)
  dataset_ids = jnp.asarray(dataset_ids, jnp.int32)
  if dataset_ids.shape != (n,) or mask.shape != (n,):
    raise ValueError(f"dataset_ids and mask must be [N]=({n},); got "
                     f"{dataset_ids.shape}, {mask.shape}")
  stats = segment_stats(values, dataset_ids, num_datasets, mask, ddof=ddof,
                        axis_name=axis_name)
  out = (values - stats.mean[dataset_ids]) / (stats.std[dataset_ids] + eps)
  m = mask.reshape((n,) + (1,) * (values.ndim - 1)) > 0
  return jnp.where(m, out, 0.0)


def dataset_balance_weights(dataset_ids: Array, num_datasets: int,
                            mask: Optional[Array] = None, *,
                            axis_name: Optional[str] = None) -> Array:
  """`[N]` weights b[i] = n_valid / (D_present * n[d(i)]); 0 on padding.

  Each dataset present in the (global) batch then sums to n_valid / D_present,
  and the weights sum to n_valid, so the loss scale is unchanged.
  """
  dataset_ids = jnp.asarray(dataset_ids, jnp.int32)
  n = dataset_ids.shape[0]
  mask = jnp.ones((n,), jnp.float32) if mask is None else jnp.asarray(mask, jnp.float32)
  counts = segment_sum(mask, dataset_ids, num_datasets, axis_name)
  present = jnp.sum(counts > 0)
  total = jnp.sum(counts)
  b = total / (jnp.maximum(present, 1) * jnp.maximum(counts[dataset_ids], 1.0))
  return b * mask


# ------------------------------------------------------ running statistics
class RunningDatasetStats(NamedTuple):
  """Exponential moving per-dataset moments of the advantages."""

  mean: Array  # [D] float32, EMA of the batch mean (biased towards 0 early)
  mean_sq: Array  # [D] float32, EMA of the batch mean of x^2
  debias: Array  # [D] float32, 1 - decay^t_d (t_d = updates of dataset d)
  count: Array  # [D] int32, number of updates that saw dataset d


class RunningStatsFns(NamedTuple):
  init: Callable[[], RunningDatasetStats]
  update: Callable[..., RunningDatasetStats]


def init_dataset_stats(num_datasets: int) -> RunningDatasetStats:
  """Zero running statistics for `num_datasets` datasets."""
  zeros = jnp.zeros((num_datasets,), jnp.float32)
  return RunningDatasetStats(mean=zeros, mean_sq=zeros, debias=zeros,
                             count=jnp.zeros((num_datasets,), jnp.int32))


def update_dataset_stats(state: RunningDatasetStats, values: Array,
                         dataset_ids: Array, mask: Optional[Array] = None, *,
                         decay: float = 0.99,
                         axis_name: Optional[str] = None) -> RunningDatasetStats:
  """One EMA step from the batch `values [N]`; datasets absent are untouched.

    m_d  <- decay m_d  + (1 - decay) mean_batch_d(x)
    s_d  <- decay s_d  + (1 - decay) mean_batch_d(x^2)
    c_d  <- decay c_d  + (1 - decay)            (so c_d = 1 - decay^t_d)

  Batch moments are reduced over `axis_name`, so every device holds the same
  state.
  """
  if not 0.0 <= decay < 1.0:
    raise ValueError(f"decay must be in [0, 1), got {decay}")
  values = jnp.asarray(values, jnp.float32)
  n = values.shape[0]
  mask = jnp.ones((n,), jnp.float32) if mask is None else jnp.asarray(mask, jnp.float32)
  dataset_ids = jnp.asarray(dataset_ids, jnp.int32)
  num_datasets = state.mean.shape[0]
  moments = ScatterSegments(dataset_ids, num_datasets, axis_name).moments(
      [values], [mask])[0]
  return update_dataset_stats_from_moments(state, moments, decay=decay)


def update_dataset_stats_from_moments(state: RunningDatasetStats,
                                      moments: Moments, *,
                                      decay: float = 0.99) -> RunningDatasetStats:
  """`update_dataset_stats` from per-dataset `segments.Moments` of the batch.

  The batch mean of x^2 is (m2 + 2 mean total - mean^2 count) / count.
  """
  if not 0.0 <= decay < 1.0:
    raise ValueError(f"decay must be in [0, 1), got {decay}")
  count = moments.count
  seen = count > 0
  batch_mean = moments.mean
  sum_sq = moments.m2 + batch_mean * (2.0 * moments.total - batch_mean * count)
  batch_mean_sq = jnp.maximum(sum_sq, 0.0) / jnp.maximum(count, 1.0)
  ema = lambda old, new: jnp.where(seen, decay * old + (1.0 - decay) * new, old)
  return RunningDatasetStats(
      mean=ema(state.mean, batch_mean),
      mean_sq=ema(state.mean_sq, batch_mean_sq),
      debias=ema(state.debias, jnp.ones_like(state.debias)),
      count=state.count + seen.astype(jnp.int32))


def running_mean_std(state: RunningDatasetStats) -> tuple[Array, Array]:
  """Debiased `(mean [D], std [D])`; datasets never seen get (0, 1)."""
  seen = state.debias > 0
  scale = jnp.where(seen, state.debias, 1.0)
  mean = state.mean / scale
  var = jnp.maximum(state.mean_sq / scale - mean * mean, 0.0)
  return jnp.where(seen, mean, 0.0), jnp.where(seen, jnp.sqrt(var), 1.0)


def normalize_with_stats(state: RunningDatasetStats, values: Array,
                         dataset_ids: Array, mask: Optional[Array] = None, *,
                         eps: float = 1e-6) -> Array:
  """(x - mu[d]) / (sigma[d] + eps) with the debiased running statistics."""
  values = jnp.asarray(values, jnp.float32)
  mean, std = running_mean_std(state)
  dataset_ids = jnp.asarray(dataset_ids, jnp.int32)
  out = (values - mean[dataset_ids]) / (std[dataset_ids] + eps)
  if mask is not None:
    out = jnp.where(jnp.asarray(mask) > 0, out, 0.0)
  return out


def running_dataset_stats(num_datasets: int, *, decay: float = 0.99,
                          axis_name: Optional[str] = None) -> RunningStatsFns:
  """`(init, update)` pair for running per-dataset statistics (rlax style).

    init() -> RunningDatasetStats
    update(state, values [N], dataset_ids [N], mask [N] | None) -> state
  """
  def init() -> RunningDatasetStats:
    return init_dataset_stats(num_datasets)

  def update(state, values, dataset_ids, mask=None) -> RunningDatasetStats:
    return update_dataset_stats(state, values, dataset_ids, mask, decay=decay,
                                axis_name=axis_name)

  return RunningStatsFns(init=init, update=update)
