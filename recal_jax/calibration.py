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
  seen with a single row normalises to 0; with `keep_zeros` (advantages)
  rows with A = 0 stay 0 (`estimators.standardize`).

* Dataset balancing: the weights w (e.g. omega[g(i)]) scaled by
  `W / (D_present * W[d(i)])`, W[d] the total weight of dataset d, so each
  dataset present contributes the same total weight to the loss.

`group_size` is the layout (`recal_jax.advantage` module docstring): None
for any, an int G when every group is G contiguous rows in one dataset.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from recal_jax import estimators
from recal_jax import segments as seg_lib

Array = jax.Array

VARIANCE_H = ("std", "bernoulli", "power")


def _jit(*static):
  return functools.partial(jax.jit, static_argnames=static)


def _rows(name: str, values: Array, mask: Optional[Array], ids: Array, num: int):
  values = jnp.asarray(values, jnp.float32)
  n = values.shape[0]
  return values, estimators.as_mask(mask, n), estimators.check_ids(name, ids, n, num)


class GroupSpread(NamedTuple):
  h: Array  # [G] float32, h(spread) per group, 0 for absent groups
  count: Array  # [G] float32, valid members per group
  zero_spread: Array  # [G] bool, present and every member equal (std 0)


@_jit("num_groups", "h", "power", "ddof", "axis_name", "group_size")
def group_spread(values: Array, group_ids: Array, num_groups: int,
                 mask: Optional[Array] = None, *, h: str = "bernoulli",
                 power: float = 1.0, ddof: int = 0,
                 axis_name: Optional[str] = None,
                 group_size: Optional[int] = None) -> GroupSpread:
  """h(spread) of `values [N]` per group -> `GroupSpread` (`[G]` each).

  `h` is one of `VARIANCE_H` (module docstring); `ddof` is that of the std
  ('std', 'power'); `group_size` the layout (`advantage` module docstring).
  """
  if h not in VARIANCE_H:
    raise ValueError(f"h must be one of {VARIANCE_H}, got {h!r}")
  values, mask, group_ids = _rows("group_ids", values, mask, group_ids, num_groups)
  seg = seg_lib.group_segmentation(group_ids, num_groups, group_size, axis_name)
  mo = seg.moments([values], [estimators.valid_rows(values, mask, seg)])[0]
  stats = mo.stats(ddof)
  if h == "std":
    spread = stats.std
  elif h == "bernoulli":
    p = jnp.clip(stats.mean, 0.0, 1.0)
    spread = jnp.sqrt(p * (1.0 - p))
  else:
    spread = stats.std ** power
  present = mo.count > 0
  return GroupSpread(h=jnp.where(present, spread, 0.0), count=mo.count,
                     zero_spread=present & (mo.m2 == 0))


def variance_weights_from_spread(spread: GroupSpread, *, w_min: float = 0.1,
                                 w_max: float = 3.0) -> Array:
  """omega `[G]` = clip(h_g / mean of h over present groups, w_min, w_max).

  Absent groups get 0; if every present group has h = 0, present groups get 1.
  """
  present = spread.count > 0
  mean_h = (seg_lib.pairwise_sum(jnp.where(present, spread.h, 0.0))
            / jnp.maximum(jnp.sum(present), 1))
  omega = jnp.where(mean_h > 0,
                    jnp.clip(spread.h / jnp.where(mean_h > 0, mean_h, 1.0), w_min, w_max),
                    1.0)
  return jnp.where(present, omega, 0.0)


@_jit("num_groups", "h", "power", "w_min", "w_max", "ddof", "axis_name", "group_size")
def variance_weights(values: Array, group_ids: Array, num_groups: int,
                     mask: Optional[Array] = None, *, h: str = "bernoulli",
                     power: float = 1.0, w_min: float = 0.1, w_max: float = 3.0,
                     ddof: int = 0, axis_name: Optional[str] = None,
                     group_size: Optional[int] = None) -> tuple[Array, Array]:
  """Variance-aware weights from the spread of the primary reward.

  Args:
    values: `[N]` primary reward (ReCal's `variance_component`).
    group_ids: `[N]` int group ids in [0, num_groups).
    num_groups: static G.
    mask: `[N]` validity (default all valid).
    h, power: the spread function (module docstring).
    w_min, w_max: clip range of the weights.
    ddof: of the group std for 'std' / 'power'.
    axis_name: mapped axis to reduce over.
    group_size: the layout (None: any; an int G: G contiguous rows a group).

  Returns:
    `(per_rollout [N], per_group [G])`: omega[g(i)] on valid rows (0 on
    padding), and omega per group (0 for absent groups).
  """
  spread = group_spread(values, group_ids, num_groups, mask, h=h, power=power,
                        ddof=ddof, axis_name=axis_name, group_size=group_size)
  omega = variance_weights_from_spread(spread, w_min=w_min, w_max=w_max)
  values, mask, group_ids = _rows("group_ids", values, mask, group_ids, num_groups)
  seg = seg_lib.group_segmentation(group_ids, num_groups, group_size, axis_name)
  return seg.take(omega) * estimators.valid_rows(values, mask, seg), omega


@_jit("num_datasets", "eps", "ddof", "axis_name", "group_size", "keep_zeros")
def dataset_normalize(values: Array, dataset_ids: Array, num_datasets: int,
                      mask: Optional[Array] = None, *, eps: float = 1e-6,
                      ddof: int = 0, axis_name: Optional[str] = None,
                      group_size: Optional[int] = None,
                      keep_zeros: bool = False) -> Array:
  """Standardise `values [N]` or `[N, K]` per dataset with batch statistics.

    out[i] = (x[i] - mean_{d(i)}(x)) / (std_{d(i)}(x) + eps)

  Padding rows get 0; a dataset with one valid row, or without spread, gets
  0. `keep_zeros`: rows with x = 0 stay 0 (for advantages, where it is the
  maths: see `estimators.standardize`). `group_size=G`: every block of G
  contiguous rows is in one dataset (its first row's).
  """
  values = jnp.asarray(values, jnp.float32)
  n = values.shape[0]
  mask = estimators.as_mask(mask, n)
  dataset_ids = estimators.check_ids("dataset_ids", dataset_ids, n, num_datasets)
  seg = seg_lib.dataset_segmentation(dataset_ids, num_datasets, group_size, axis_name)
  valid = estimators.valid_rows(values, mask, seg)
  out = [estimators.standardize(c, valid, seg, ddof=ddof, eps=eps, keep_zeros=keep_zeros)
         for c in estimators.columns(values)]
  return out[0] if values.ndim == 1 else jnp.stack(out, axis=1)


@_jit("num_datasets", "axis_name", "group_size")
def dataset_balance_weights(dataset_ids: Array, num_datasets: int,
                            mask: Optional[Array] = None, *,
                            weights: Optional[Array] = None,
                            axis_name: Optional[str] = None,
                            group_size: Optional[int] = None) -> Array:
  """Weights scaled so that every dataset's total weight is equal.

    out[i] = w[i] * W / (D_present * W[d(i)]),   W[d] = sum_{i in d} w[i]

  with w = `weights [N]` (e.g. the variance weights; default the mask) on
  valid rows and W = sum_d W[d]. Each dataset with W[d] > 0 then totals
  W / D_present and the total W is unchanged. Padding rows get 0.
  """
  dataset_ids = jnp.asarray(dataset_ids)
  n = dataset_ids.shape[0]
  mask = estimators.as_mask(mask, n)
  dataset_ids = estimators.check_ids("dataset_ids", dataset_ids, n, num_datasets)
  seg = seg_lib.dataset_segmentation(dataset_ids, num_datasets, group_size, axis_name)
  valid = estimators.valid_rows(mask, mask, seg)
  w = valid if weights is None else jnp.where(valid > 0, jnp.asarray(weights, jnp.float32), 0.0)
  totals = seg.sums([w])[0]
  present = jnp.sum(totals > 0)
  balance = jnp.where(totals > 0, seg_lib.pairwise_sum(totals)
                      / (jnp.maximum(present, 1) * jnp.where(totals > 0, totals, 1.0)), 0.0)
  return w * seg.take(balance)


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


@_jit("num_datasets")
def init_dataset_stats(num_datasets: int) -> RunningDatasetStats:
  """Zero running statistics for `num_datasets` datasets."""
  zeros = jnp.zeros((num_datasets,), jnp.float32)
  return RunningDatasetStats(mean=zeros, mean_sq=zeros, debias=zeros,
                             count=jnp.zeros((num_datasets,), jnp.int32))


@_jit("decay", "axis_name", "group_size")
def update_dataset_stats(state: RunningDatasetStats, values: Array,
                         dataset_ids: Array, mask: Optional[Array] = None, *,
                         decay: float = 0.99, axis_name: Optional[str] = None,
                         group_size: Optional[int] = None) -> RunningDatasetStats:
  """One EMA step from the batch `values [N]`; datasets absent are untouched.

    m_d  <- decay m_d  + (1 - decay) mean_batch_d(x)
    s_d  <- decay s_d  + (1 - decay) mean_batch_d(x^2)
    c_d  <- decay c_d  + (1 - decay)            (so c_d = 1 - decay^t_d)

  Batch moments are reduced over `axis_name`, so every device holds the same
  state; `group_size` as in `dataset_normalize`.
  """
  if not 0.0 <= decay < 1.0:
    raise ValueError(f"decay must be in [0, 1), got {decay}")
  num_datasets = state.mean.shape[0]
  values, mask, dataset_ids = _rows("dataset_ids", values, mask, dataset_ids, num_datasets)
  seg = seg_lib.dataset_segmentation(dataset_ids, num_datasets, group_size, axis_name)
  mo = seg.moments([values], [estimators.valid_rows(values, mask, seg)])[0]
  seen = mo.count > 0
  batch_mean = mo.mean
  batch_mean_sq = mo.m2 / jnp.maximum(mo.count, 1.0) + batch_mean * batch_mean
  ema = lambda old, new: jnp.where(seen, decay * old + (1.0 - decay) * new, old)
  return RunningDatasetStats(
      mean=ema(state.mean, batch_mean),
      mean_sq=ema(state.mean_sq, batch_mean_sq),
      debias=ema(state.debias, jnp.ones_like(state.debias)),
      count=state.count + seen.astype(jnp.int32))


@jax.jit
def running_mean_std(state: RunningDatasetStats) -> tuple[Array, Array]:
  """Debiased `(mean [D], std [D])`; datasets never seen get (0, 1)."""
  seen = state.debias > 0
  scale = jnp.where(seen, state.debias, 1.0)
  mean = state.mean / scale
  var = jnp.maximum(state.mean_sq / scale - mean * mean, 0.0)
  return jnp.where(seen, mean, 0.0), jnp.where(seen, jnp.sqrt(var), 1.0)


@_jit("eps", "keep_zeros")
def normalize_with_stats(state: RunningDatasetStats, values: Array,
                         dataset_ids: Array, mask: Optional[Array] = None, *,
                         eps: float = 1e-6, keep_zeros: bool = False) -> Array:
  """(x - mu[d]) / (sigma[d] + eps) with the debiased running statistics.

  Padding rows (and, with `keep_zeros`, rows with x = 0) get 0.
  """
  values = jnp.asarray(values, jnp.float32)
  mean, std = running_mean_std(state)
  dataset_ids = jnp.asarray(dataset_ids, jnp.int32)
  out = ((values - jnp.take(mean, dataset_ids, mode="clip"))
         / (jnp.take(std, dataset_ids, mode="clip") + eps))
  keep = jnp.ones(values.shape, bool) if mask is None else jnp.asarray(mask) > 0
  if keep_zeros:
    keep = keep & (values != 0)
  return jnp.where(keep, out, 0.0)


def running_dataset_stats(num_datasets: int, *, decay: float = 0.99,
                          axis_name: Optional[str] = None,
                          group_size: Optional[int] = None) -> RunningStatsFns:
  """`(init, update)` pair for running per-dataset statistics (rlax style).

    init() -> RunningDatasetStats
    update(state, values [N], dataset_ids [N], mask [N] | None) -> state
  """
  def init() -> RunningDatasetStats:
    return init_dataset_stats(num_datasets)

  def update(state, values, dataset_ids, mask=None) -> RunningDatasetStats:
    return update_dataset_stats(state, values, dataset_ids, mask, decay=decay,
                                axis_name=axis_name, group_size=group_size)

  return RunningStatsFns(init=init, update=update)
