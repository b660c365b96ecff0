"""Group advantages for RL: GRPO, Dr. GRPO, RLOO, GDPO and ReCal.

Flat batches: N rollouts, rollout i in group `group_ids[i]` of
[0, num_groups) (the G samples of one prompt) and, for ReCal, in dataset
`dataset_ids[i]` of [0, num_datasets). `mask [N]` marks valid rows; padding
rows get advantage 0 and weight 0 whatever they hold. Reward components are
named (`ReCalConfig.components`); the routing preset is
`method_config("recal")`: format -> correctness -> cost.

Plug into your own loop (eager calls compile once per shape and config):

    from recal_jax import advantage
    cfg = advantage.method_config("recal")
    out = advantage.recal_advantages(components, group_ids, num_groups,
                                     dataset_ids, num_datasets, mask,
                                     config=cfg, group_size=G)
    loss = ...(out.advantages, sample_weights=out.weights)

Conventions (every one a keyword argument; PEERS.md has the peers' values):
  * `ddof` of the group std: 0 by default (`jnp.std`); 1 gives TRL/verl.
  * `eps` is added to the std: A = (r - mean) / (std + eps).
  * a group without spread (all rewards equal) gets A = 0 exactly, in
    float32, for any group size, estimator and layout; normalisations after
    stage 1 keep those rows at 0 (`estimators.standardize`).
  * a one-member group gets 0 (`singleton="zero"`, TRL/tunix) or its raw
    reward (`singleton="raw"`, verl's GRPO loop: mean 0, std 1).
  * `group_size`: the caller's static layout. None: any (ragged, any order).
    An int G: every group is G contiguous rows, in order, so that row i is
    in group `group_ids[0] + i // G` (`group_ids[0]` is the local shard's
    first group under `shard_map`; it is the only id read) and, for ReCal,
    in the dataset of its group's first row. Not checked at run time:
    `check_inputs(..., group_size=G)` checks it on the host.
Every public function is pure, jitted with its configuration static, and
takes `axis_name` so that a batch sharded over devices (`shard_map`, `pmap`)
gives the statistics of the global batch; with GSPMD no flag is needed.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp

from recal_jax import calibration
from recal_jax import segments as seg_lib
from recal_jax.estimators import (ESTIMATORS, SINGLETON_RULES,  # noqa: F401
                                  STD_SCALINGS, check_inputs,
                                  componentwise_advantages, gdpo_advantages,
                                  group_stats, grpo_advantages, rloo_advantages,
                                  whiten)
from recal_jax.hierarchy import Hierarchy, gate_columns, hierarchical_gate  # noqa: F401
from recal_jax import estimators as est
from recal_jax.recal_config import (METHODS, ROUTING_COMPONENTS,  # noqa: F401
                                   ROUTING_TREE, ReCalConfig, method_config)

Array = jax.Array


class ReCalOutput(NamedTuple):
  advantages: Array  # [N] float32, 0 on invalid rows
  weights: Array  # [N] float32 per-rollout loss weights, 0 on invalid rows
  diagnostics: dict  # name -> scalar or small array (see recal_advantages)
  dataset_state: Optional[calibration.RunningDatasetStats]


@est._jit("num_groups", "num_datasets", "config", "axis_name", "group_size")  # pylint: disable=protected-access
def recal_advantages(components: Array, group_ids: Array, num_groups: int,
                     dataset_ids: Optional[Array] = None, num_datasets: int = 1,
                     mask: Optional[Array] = None, *, config: ReCalConfig,
                     dataset_state: Optional[calibration.RunningDatasetStats] = None,
                     axis_name: Optional[str] = None,
                     group_size: Optional[int] = None) -> ReCalOutput:
  """The ReCal calibrated advantage: stages 1 and 2 of METHOD.md, all switchable.

  Composed of the public stage functions (names from `config`):
    0. r[:, c] <- `calibration.dataset_normalize`(r[:, c]), c in
       `dataset_norm_components` (continuous raw components such as cost).
    1. gate, r <- `hierarchical_gate`(r)                      (if hierarchy)
       'components': A = sum_k w_k `componentwise_advantages`(r)[:, k]
                     (its `estimators.estimate` on the K columns)
                     (statistics among gated-in members if conditional)
       'sum':        A = `grpo_advantages` / `rloo_advantages` of
                     sum_k w_k r[:, k] (`sum_weights`; with the hierarchy's
                     fail values this is Router-R1's scalar reward)
       then `whiten`(A) if `whiten`.
    2. omega = `calibration.variance_weights` of `variance_component`
       Ahat  = `calibration.dataset_normalize`(A)  ('batch': its
               `estimators.standardize`, sharing the dataset moments with
               the diagnostics), or
               `update_dataset_stats` + `normalize_with_stats` ('running')
       weight = omega[g(i)], then `dataset_balance_weights` if
               `balance_datasets` (every dataset's total weight equal).
  Rows with A = 0 (groups without spread) stay 0 through the
  normalisations: see `estimators.standardize`.

  Args:
    components: `[N, K]` reward components, column k named
      `config.components[k]`.
    group_ids: `[N]` int, group of each rollout.
    num_groups: static number of groups.
    dataset_ids: `[N]` int dataset of each rollout (default: all 0).
    num_datasets: static number of datasets.
    mask: `[N]` validity.
    config: a `ReCalConfig` (`method_config(name)` for the presets); static.
    dataset_state: running per-dataset statistics (required for
      `dataset_norm='running'`; `calibration.init_dataset_stats`).
    axis_name: mapped axis to reduce every statistic over.
    group_size: the layout (module docstring): None, or a static int G.

  Returns:
    `ReCalOutput(advantages [N], weights [N], diagnostics, dataset_state)`.
    Diagnostics, over valid rows (mask > 0, finite, ids in range):
      invalid_rows: rows with mask > 0 dropped (non-finite reward or id out
        of range).
      component_mean [K]: mean raw component.
      gate_pass_rate [K]: share of valid rows whose gate for component k
        passed (all ancestors' predicates hold); 1 without a hierarchy.
      component_adv_std [K]: root mean square of A[:, k] over valid rows
        (mask-weighted: sqrt(sum m A^2 / sum m), from the group moments), the
        component's advantage before weighting and stage 2 ('components'
        only).
      zero_spread_groups: share of groups with valid rows whose
        `variance_component` has zero spread (std 0: all members equal,
        graded scores included); only with a `variance_component`.
      weight_mean: mean loss weight.
      dataset_count [D], dataset_adv_mean [D], dataset_adv_std [D]: valid
        rows, mean and std (ddof 0) per dataset of the advantages before the
        per-dataset normalisation (what it corrects).
  """
  components = est.check_rewards(components, 2, "components")
  n, k = components.shape
  config.check_components(k)
  group_ids = est.check_ids("group_ids", group_ids, n, num_groups)
  if dataset_ids is None:
    dataset_ids = jnp.zeros((n,), jnp.int32)
  dataset_ids = est.check_ids("dataset_ids", dataset_ids, n, num_datasets)
  if config.dataset_norm == "running" and dataset_state is None:
    raise ValueError("config.dataset_norm='running' needs a dataset_state "
                     "(calibration.init_dataset_stats(num_datasets))")
  layout = dict(axis_name=axis_name, group_size=group_size)
  groups = seg_lib.group_segmentation(group_ids, num_groups, group_size, axis_name)
  datasets = seg_lib.dataset_segmentation(dataset_ids, num_datasets, group_size, axis_name)
  given = est.as_mask(mask, n)
  valid = est.valid_rows(components, given, groups, datasets)
  raw = est.columns(components)  # rows outside `valid` are never read
  stats = dict(ddof=config.ddof, eps=config.eps)
  names = config.components

  # Stage 0: continuous raw components standardised per dataset.
  r = list(raw)
  for c in config.dataset_norm_components:  # `calibration.dataset_normalize`
    r[names.index(c)] = est.standardize(r[names.index(c)], valid, datasets, **stats)

  # Stage 1: hierarchical gate, component-wise (or summed) advantages.
  gates = None
  if config.hierarchy is not None:
    gates, r = gate_columns(r, config.hierarchy, names)
  estimator = dict(estimator=config.estimator, std_scaling=config.std_scaling,
                   singleton=config.singleton, **stats)
  count = seg_lib.pairwise_sum(valid)
  denom = jnp.maximum(count, 1.0)
  diagnostics = {
      "invalid_rows": seg_lib.pairwise_sum(given) - count,
      "component_mean": jnp.stack(
          [seg_lib.pairwise_sum(jnp.where(valid > 0, c, 0.0)) for c in raw]) / denom,
      "gate_pass_rate": (jnp.ones((k,), jnp.float32) if gates is None else jnp.stack(
          [seg_lib.pairwise_sum(valid * g) for g in gates]) / denom),
  }
  if config.reward == "components":
    # `componentwise_advantages` on the K columns (no [N, K] round trip).
    members = [valid] * k
    if gates is not None and config.conditional:
      members = [valid * g for g in gates]
    per, squares = est.estimate(r, members, groups, **estimator, square_sums=True)
    adv = est.weighted_sum(per, config.weight_vector())
    diagnostics["component_adv_std"] = jnp.sqrt(jnp.stack(squares) / denom)
  else:
    scalar = est.weighted_sum(r, config.weight_vector(sum_weights=True))
    if config.estimator == "grpo":
      adv = grpo_advantages(scalar, group_ids, num_groups, valid,
                            std_scaling=config.std_scaling, singleton=config.singleton,
                            **stats, **layout)
    else:
      adv = rloo_advantages(scalar, group_ids, num_groups, valid,
                            singleton=config.singleton, **layout)
  if config.whiten:
    adv = whiten(adv, valid, **stats, axis_name=axis_name, keep_zeros=True)

  # Stage 2: variance-aware weights, per-dataset normalisation, balance.
  weights = valid
  if config.variance_component is not None:
    column = raw[names.index(config.variance_component)]
    spread = calibration.group_spread(column, group_ids, num_groups, valid,
                                      h=config.variance_h, power=config.variance_power,
                                      ddof=config.ddof, **layout)
    omega = calibration.variance_weights_from_spread(
        spread, w_min=config.weight_min, w_max=config.weight_max)
    weights = groups.take(omega) * valid
    diagnostics["zero_spread_groups"] = (
        jnp.sum(spread.zero_spread) / jnp.maximum(jnp.sum(spread.count > 0), 1))
  if config.balance_datasets:
    weights = calibration.dataset_balance_weights(dataset_ids, num_datasets, valid,
                                                  weights=weights, **layout)
  new_state = dataset_state
  before = datasets.moments([adv], [valid])[0]
  if config.dataset_norm == "batch":
    # `calibration.dataset_normalize` with the moments computed above.
    adv = est.standardize(adv, valid, datasets, **stats, keep_zeros=True, moments=before)
  elif config.dataset_norm == "running":
    new_state = calibration.update_dataset_stats(
        dataset_state, adv, dataset_ids, valid, decay=config.running_decay, **layout)
    adv = calibration.normalize_with_stats(new_state, adv, dataset_ids, valid,
                                           eps=config.eps, keep_zeros=True)
  else:
    adv = jnp.where(valid > 0, adv, 0.0)
  before = before.stats(0)
  diagnostics.update(weight_mean=seg_lib.pairwise_sum(weights) / denom,
                     dataset_count=before.count, dataset_adv_mean=before.mean,
                     dataset_adv_std=before.std)
  return ReCalOutput(adv, weights, diagnostics, new_state)
