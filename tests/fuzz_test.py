"""Fuzz tests (hypothesis) of the public functions of advantage, calibration, losses.

Every test draws batches of random layout and values and checks the contract
the module docstrings state, whatever the batch:

* outputs have the documented shapes and are finite;
* rows that are masked, hold a non-finite reward or an out-of-range id (where
  the function documents dropping them) get exactly 0 (advantages, weights),
  and padding may hold anything, NaN included;
* the `recal_advantages` output of every method in `advantage.METHODS` (and
  ReCal with running dataset statistics), taken through `losses.policy_loss`,
  its gradient and an Adam update, gives finite gradients and parameters.

Layouts: contiguous groups (the fast path), ragged random ids, one-member
groups, everything in one group, all rows masked, absent datasets. Values:
Bernoulli, continuous, constant groups, magnitudes from 1e-30 to 1e15, and
NaN / +-inf in rows the contract drops. Finite rewards are limited to
|r| <= 1e15: above ~1e18 squared deviations overflow float32 and the
statistics are no longer finite (docs_drafts/workspace_reliability.md).

Compiles are the cost: shapes come in a few buckets and the jitted function
of each (function, static options, bucket) is built once (lru_cache), so
hypothesis examples only run compiled code.
"""

from __future__ import annotations

import functools

import hypothesis
from hypothesis import strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from recal_jax import advantage
from recal_jax import calibration
from recal_jax import losses

# (rows N, groups G) buckets; datasets D and components K are fixed.
SMALL, LARGE = (6, 3), (24, 6)
NUM_DATASETS, NUM_COMPONENTS = 3, 3
MAGNITUDES = (1e-30, 1e-6, 1.0, 1e3, 1e15)
LAYOUTS = ("contiguous", "ragged", "one_member_groups", "one_group")
FUZZ = hypothesis.settings(max_examples=20, deadline=None, print_blob=True,
                           suppress_health_check=[hypothesis.HealthCheck.too_slow])


def _assert_finite(tree, what):
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    assert np.isfinite(np.asarray(leaf)).all(), f"{what}{jax.tree_util.keystr(path)}: {leaf}"


# ------------------------------------------------------------------ batches
@st.composite
def batches(draw, bucket, num_columns=NUM_COMPONENTS, non_finite=True, bad_ids=True):
  """A batch dict of one bucket: values [N, C] (C=0: [N]), ids, mask, validity.

  `valid` marks the rows the contract keeps: mask > 0, finite values (if
  `non_finite` draws NaN / inf into kept rows) and ids in range.
  """
  num_rows, num_groups = bucket
  rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
  layout = draw(st.sampled_from(LAYOUTS))
  shape = (num_rows,) if num_columns == 0 else (num_rows, num_columns)
  scale = draw(st.sampled_from(MAGNITUDES))
  kind = draw(st.sampled_from(["bernoulli", "continuous", "constant_groups", "mixed"]))

  if layout == "ragged":
    group_ids = rng.integers(0, num_groups, num_rows)
  elif layout == "one_group":
    group_ids = np.full(num_rows, rng.integers(0, num_groups))
  else:
    group_ids = np.repeat(np.arange(num_groups), num_rows // num_groups)
  group_ids = group_ids.astype(np.int32)
  keep = draw(st.sampled_from([1.0, 0.7, 0.3, 0.0]))
  mask = (rng.random(num_rows) < keep).astype(np.float32)
  if layout == "one_member_groups":  # one kept row per group, the rest padding
    mask[:] = 0.0
    mask[np.unique(group_ids, return_index=True)[1]] = 1.0
  if draw(st.booleans()):
    dataset_ids = (group_ids % NUM_DATASETS).astype(np.int32)  # dataset 2 may be absent
  else:
    dataset_ids = rng.integers(0, NUM_DATASETS - 1, num_rows).astype(np.int32)

  if kind == "bernoulli":
    values = (rng.random(shape) < 0.5).astype(np.float32)
  elif kind == "constant_groups":
    base = rng.normal(size=(num_groups,) + shape[1:]) * scale
    values = base[group_ids].astype(np.float32)
  else:
    values = (rng.normal(size=shape) * scale).astype(np.float32)
    if kind == "mixed" and num_columns:
      values[:, 0] = rng.random(num_rows) < 0.8  # format-like, then
      values[:, 1] = rng.random(num_rows) < 0.5  # correctness-like columns

  valid = mask > 0
  if non_finite and draw(st.booleans()):
    rows = rng.choice(num_rows, size=rng.integers(1, 3), replace=False)
    flat = values.reshape(num_rows, -1)
    for row in rows:
      flat[row, rng.integers(0, flat.shape[1])] = rng.choice([np.nan, np.inf, -np.inf])
    valid &= np.isfinite(flat).all(1)
  if bad_ids and draw(st.booleans()):
    row = rng.integers(0, num_rows)
    group_ids[row] = rng.choice([-1, num_groups])
    valid[row] = False
  # Padding holds garbage: anything in masked rows must not matter.
  padding = mask == 0
  values[padding] = rng.choice([np.nan, np.inf, 1e30, -3.0], size=values[padding].shape)
  return dict(values=values, group_ids=group_ids, dataset_ids=dataset_ids, mask=mask,
              valid=valid, bucket=bucket)


def _bucketed(strategy_fn, **kwargs):
  return st.sampled_from([SMALL, LARGE]).flatmap(lambda b: strategy_fn(b, **kwargs))


# ------------------------------------------------------------ advantages
@functools.lru_cache(maxsize=None)
def _jit_grpo(num_groups, std_scaling, ddof, singleton):
  return jax.jit(lambda r, g, m: advantage.grpo_advantages(
      r, g, num_groups, m, std_scaling=std_scaling, ddof=ddof, singleton=singleton))


@functools.lru_cache(maxsize=None)
def _jit_rloo(num_groups, singleton):
  return jax.jit(lambda r, g, m: advantage.rloo_advantages(r, g, num_groups, m,
                                                           singleton=singleton))


GRPO_OPTIONS = (("group", 0, "zero"), ("batch", 1, "raw"), ("none", 0, "raw"))


@FUZZ
@hypothesis.given(batch=_bucketed(batches, num_columns=0),
                  options=st.sampled_from(GRPO_OPTIONS), singleton=st.sampled_from(["zero", "raw"]))
def test_grpo_and_rloo_advantages(batch, options, singleton):
  num_groups = batch["bucket"][1]
  args = (batch["values"], batch["group_ids"], batch["mask"])
  for name, out in (("grpo", _jit_grpo(num_groups, *options)(*args)),
                    ("rloo", _jit_rloo(num_groups, singleton)(*args))):
    out = np.asarray(out)
    assert out.shape == batch["values"].shape and out.dtype == np.float32
    _assert_finite(out, name)
    np.testing.assert_array_equal(out[~batch["valid"]], 0.0)


_TREE = (advantage.ROUTING_TREE, advantage.ROUTING_COMPONENTS)


@functools.lru_cache(maxsize=None)
def _jit_componentwise(num_groups, gated, conditional, estimator):
  def fn(r, g, m):
    gate = advantage.hierarchical_gate(jnp.nan_to_num(r), *_TREE)[0] if gated else None
    return advantage.componentwise_advantages(r, g, num_groups, m, gate=gate,
                                              conditional=conditional, estimator=estimator)
  return jax.jit(fn)


@functools.lru_cache(maxsize=None)
def _jit_gdpo(num_groups, whiten_sum):
  return jax.jit(lambda r, g, m: advantage.gdpo_advantages(
      r, g, num_groups, m, component_weights=(1.0, 1.0, 0.5), whiten_sum=whiten_sum))


@FUZZ
@hypothesis.given(batch=_bucketed(batches),
                  options=st.sampled_from([(True, True, "grpo"), (True, False, "rloo"),
                                           (False, True, "grpo")]),
                  whiten_sum=st.booleans())
def test_componentwise_and_gdpo_advantages(batch, options, whiten_sum):
  num_groups = batch["bucket"][1]
  args = (batch["values"], batch["group_ids"], batch["mask"])
  per = np.asarray(_jit_componentwise(num_groups, *options)(*args))
  assert per.shape == batch["values"].shape
  _assert_finite(per, "componentwise")
  np.testing.assert_array_equal(per[~batch["valid"]], 0.0)
  gated, conditional, _ = options
  if gated and conditional:
    gate = np.asarray(advantage.hierarchical_gate(np.nan_to_num(batch["values"]), *_TREE)[0])
    np.testing.assert_array_equal(per[gate == 0], 0.0)
  total = np.asarray(_jit_gdpo(num_groups, whiten_sum)(*args))
  assert total.shape == batch["values"].shape[:1]
  _assert_finite(total, "gdpo")
  np.testing.assert_array_equal(total[~batch["valid"]], 0.0)


# ------------------------------------- recal_advantages -> loss -> update
RECAL_METHODS = tuple(sorted(advantage.METHODS)) + ("recal_running_norm",)
NUM_ARMS, NUM_FEATURES = 4, 5


def _method_config(name):
  if name == "recal_running_norm":
    return advantage.method_config("recal", dataset_norm="running")
  return advantage.method_config(name)


@functools.lru_cache(maxsize=None)
def _jit_recal(name, num_groups):
  config = _method_config(name)
  return jax.jit(lambda r, g, d, m, state: advantage.recal_advantages(
      r, g, num_groups, d, NUM_DATASETS, m, config=config, dataset_state=state))


@functools.lru_cache(maxsize=None)
def _jit_update():
  """advantages, weights, mask -> (loss, grads, new params) of a linear policy."""
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-2))

  def update(params, features, actions, advantages, weights, mask):
    token_mask = (mask > 0)[:, None]
    normalizer = losses.global_normalizer(token_mask, "token-mean", weights)

    def loss_fn(params):
      logits = features @ params
      log_probs = jnp.take_along_axis(jax.nn.log_softmax(logits), actions[:, None], 1)
      return losses.policy_loss(
          log_probs, jax.lax.stop_gradient(log_probs) + 0.05, advantages, token_mask,
          sample_weights=weights, normalizer=normalizer,
          entropy=losses.entropy_from_logits(logits)[:, None], entropy_coef=0.01,
          ref_log_probs=jax.lax.stop_gradient(log_probs) - 0.1, kl_coef=0.05)

    (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, _ = tx.update(grads, tx.init(params), params)
    return loss, grads, optax.apply_updates(params, updates)

  return jax.jit(update)


def _named_case(case):
  """The bad-number cases of the reliability brief, as fixed LARGE batches."""
  num_rows, num_groups = LARGE
  rng = np.random.default_rng(7)
  values = np.stack([rng.random(num_rows) < 0.8, rng.random(num_rows) < 0.5,
                     -rng.gamma(2.0, 0.3, num_rows)], 1).astype(np.float32)
  group_ids = np.repeat(np.arange(num_groups), num_rows // num_groups).astype(np.int32)
  dataset_ids = (group_ids % 2).astype(np.int32)  # dataset 2 absent
  mask = np.ones(num_rows, np.float32)
  if case == "nan_reward":
    values[3, 1] = np.nan
  elif case == "inf_rewards":
    values[5, 2], values[9, 0] = -np.inf, np.inf
  elif case == "all_masked":
    mask[:] = 0.0
    values[0, 0] = np.nan
  elif case == "one_member_groups":
    group_ids = np.minimum(np.arange(num_rows), num_groups - 1).astype(np.int32)
  elif case == "all_equal_groups":
    values[:] = values[0]
  elif case == "one_dataset_only":
    dataset_ids[:] = 1
  valid = (mask > 0) & np.isfinite(values).all(1)
  return dict(values=values, group_ids=group_ids, dataset_ids=dataset_ids, mask=mask,
              valid=valid, bucket=LARGE, case=case)


BAD_CASES = ("nan_reward", "inf_rewards", "all_masked", "one_member_groups",
             "all_equal_groups", "one_dataset_only")


def _with_examples(test):
  for case in BAD_CASES:
    test = hypothesis.example(batch=_named_case(case))(test)
  return test


@pytest.mark.parametrize("name", RECAL_METHODS)
@hypothesis.settings(FUZZ, max_examples=12)
@hypothesis.given(batch=batches(LARGE))
@_with_examples
def test_recal_advantages_then_update_are_finite(name, batch):
  """NaN / inf rewards, all-masked batches, one-member and all-equal groups,
  absent datasets (named examples) and random batches: finite advantages,
  weights, diagnostics, running statistics, loss, gradients and parameters;
  dropped rows get 0; check_inputs names the first non-finite kept row."""
  num_groups = LARGE[1]
  valid = batch["valid"]
  state = calibration.init_dataset_stats(NUM_DATASETS)
  state = state._replace(mean=state.mean + 0.3, mean_sq=state.mean_sq + 1.0,
                         debias=state.debias + 0.5, count=state.count + 3)
  out = _jit_recal(name, num_groups)(batch["values"], batch["group_ids"],
                                     batch["dataset_ids"], batch["mask"], state)
  adv, weights = np.asarray(out.advantages), np.asarray(out.weights)
  assert adv.shape == weights.shape == (LARGE[0],)
  _assert_finite(out._replace(dataset_state=None), name)
  if out.dataset_state is not None:
    _assert_finite(out.dataset_state, f"{name} dataset_state")
  np.testing.assert_array_equal(adv[~valid], 0.0)
  np.testing.assert_array_equal(weights[~valid], 0.0)
  assert (weights >= 0).all()
  kept = batch["mask"] > 0
  assert float(out.diagnostics["invalid_rows"]) == float((kept & ~valid).sum())

  rng = np.random.default_rng(0)
  params = jnp.asarray(rng.normal(size=(NUM_FEATURES, NUM_ARMS)), jnp.float32)
  features = rng.normal(size=(LARGE[0], NUM_FEATURES)).astype(np.float32)
  actions = rng.integers(0, NUM_ARMS, LARGE[0]).astype(np.int32)
  loss, grads, new_params = _jit_update()(params, features, actions, adv, weights,
                                          batch["mask"])
  _assert_finite((loss, grads, new_params), f"{name} update")
  if not kept.any():
    assert float(loss) == 0.0 and not np.asarray(grads).any()

  bad = kept & ~np.isfinite(batch["values"]).all(1)
  if bad.any():
    with pytest.raises(ValueError, match=rf"rewards row {np.flatnonzero(bad)[0]} is not finite"):
      advantage.check_inputs(batch["values"], np.clip(batch["group_ids"], 0, num_groups - 1),
                             num_groups, batch["dataset_ids"], NUM_DATASETS, batch["mask"])


# ------------------------------------------------------------ calibration
@functools.lru_cache(maxsize=None)
def _jit_variance_weights(num_groups, h):
  return jax.jit(lambda v, g, m: calibration.variance_weights(
      v, g, num_groups, m, h=h, power=2.0 if h == "power" else 1.0, w_min=0.1, w_max=3.0))


@FUZZ
@hypothesis.given(batch=_bucketed(batches, num_columns=0, non_finite=False, bad_ids=False),
                  h=st.sampled_from(calibration.VARIANCE_H))
def test_variance_weights(batch, h):
  num_groups = batch["bucket"][1]
  per_row, per_group = _jit_variance_weights(num_groups, h)(
      batch["values"], batch["group_ids"], batch["mask"])
  per_row, per_group = np.asarray(per_row), np.asarray(per_group)
  assert per_row.shape == (batch["bucket"][0],) and per_group.shape == (num_groups,)
  _assert_finite((per_row, per_group), "variance_weights")
  kept = batch["mask"] > 0
  np.testing.assert_array_equal(per_row[~kept], 0.0)
  present = np.zeros(num_groups, bool)
  present[batch["group_ids"][kept]] = True
  np.testing.assert_array_equal(per_group[~present], 0.0)
  w = per_group[present]
  assert ((w >= 0.1 - 1e-6) & (w <= 3.0 + 1e-6)).all(), w


@functools.lru_cache(maxsize=None)
def _jit_dataset_fns(num_rows):
  del num_rows  # one cache entry (and compile) per bucket

  def fn(values, values_2d, dataset_ids, mask, state):
    normalized = calibration.dataset_normalize(values, dataset_ids, NUM_DATASETS, mask)
    normalized_2d = calibration.dataset_normalize(values_2d, dataset_ids, NUM_DATASETS, mask)
    balance = calibration.dataset_balance_weights(dataset_ids, NUM_DATASETS, mask)
    init, update = calibration.running_dataset_stats(NUM_DATASETS, decay=0.9)
    del init
    new_state = update(update(state, values, dataset_ids, mask), values * 0.5,
                       dataset_ids, mask)
    mean, std = calibration.running_mean_std(new_state)
    with_stats = calibration.normalize_with_stats(new_state, values, dataset_ids, mask)
    return normalized, normalized_2d, balance, new_state, mean, std, with_stats

  return jax.jit(fn)


@FUZZ
@hypothesis.given(batch=_bucketed(batches, non_finite=False, bad_ids=False),
                  fresh_state=st.booleans())
def test_dataset_normalisation_balance_and_running_stats(batch, fresh_state):
  values_2d = batch["values"]
  values = values_2d[:, -1].copy()
  mask, dataset_ids = batch["mask"], batch["dataset_ids"]
  kept = mask > 0
  state = calibration.running_dataset_stats(NUM_DATASETS).init()
  if not fresh_state:
    state = calibration.update_dataset_stats(state, np.linspace(-1, 1, len(values)),
                                             dataset_ids)
  normalized, normalized_2d, balance, new_state, mean, std, with_stats = (
      _jit_dataset_fns(len(values))(values, values_2d, dataset_ids, mask, state))
  _assert_finite((normalized, normalized_2d, balance, new_state, mean, std, with_stats),
                 "dataset functions")
  assert np.asarray(normalized).shape == values.shape
  assert np.asarray(normalized_2d).shape == values_2d.shape
  for out in (normalized, normalized_2d, balance, with_stats):
    np.testing.assert_array_equal(np.asarray(out)[~kept], 0.0)
  balance = np.asarray(balance)
  np.testing.assert_allclose(balance.sum(), kept.sum(), rtol=1e-5)
  seen = np.bincount(dataset_ids[kept], minlength=NUM_DATASETS) > 0
  for d in np.flatnonzero(seen):
    np.testing.assert_allclose(balance[dataset_ids == d].sum(), kept.sum() / seen.sum(),
                               rtol=1e-5)
  assert (np.asarray(std) >= 0).all()
  # Datasets absent from the batch keep their statistics.
  for field in ("mean", "mean_sq", "debias", "count"):
    np.testing.assert_array_equal(np.asarray(getattr(new_state, field))[~seen],
                                  np.asarray(getattr(state, field))[~seen])
  np.testing.assert_array_equal(np.asarray(new_state.count) - np.asarray(state.count),
                                2 * seen)


# ----------------------------------------------------------------- losses
# (rows, tokens) buckets: a routing decision is one token; routes have a few.
LOSS_BUCKETS = ((6, 1), (16, 4))


# (mode, dual_clip, kl_estimator, global normaliser, sample weights, [N, T]
# advantages): every mode once, the other switches spread over them; one
# compile per entry and bucket.
LOSS_OPTIONS = (
    ("token-mean", None, "k3", True, True, False),
    ("token-sum", 3.0, "k1", False, False, True),
    ("seq-mean-token-sum", None, "k2", True, True, True),
    ("seq-mean-token-mean", 3.0, "k3", False, True, False),
    ("seq-mean-token-sum-norm", None, "k1", True, False, False),
)
assert sorted(o[0] for o in LOSS_OPTIONS) == sorted(losses.MODES)


@st.composite
def loss_batches(draw):
  """(options, batch): inputs of policy_loss with garbage in the padding."""
  options = draw(st.sampled_from(LOSS_OPTIONS))
  per_token_adv = options[-1]
  num_rows, num_tokens = draw(st.sampled_from(LOSS_BUCKETS))
  rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
  shape = (num_rows, num_tokens)
  keep = draw(st.sampled_from([1.0, 0.6, 0.2, 0.0]))
  token_mask = rng.random(shape) < keep
  if draw(st.booleans()):
    token_mask[rng.integers(0, num_rows)] = False  # an empty row
  scale = draw(st.sampled_from(MAGNITUDES))
  spread = draw(st.sampled_from([0.1, 3.0, 50.0]))  # of the log-probs
  log_probs, old_log_probs, ref_log_probs = (
      -np.abs(rng.normal(size=shape) * spread).astype(np.float32) for _ in range(3))
  entropy = np.abs(rng.normal(size=shape)).astype(np.float32)
  advantages = (rng.normal(size=shape if per_token_adv else (num_rows,)) * scale
                ).astype(np.float32)
  weights = (rng.random(num_rows) * 3.0).astype(np.float32)
  weights[rng.random(num_rows) < 0.2] = 0.0
  # Padding holds garbage: NaN / inf where the mask is 0.
  for array in (log_probs, old_log_probs, ref_log_probs, entropy):
    array[~token_mask] = rng.choice([np.nan, np.inf, -np.inf], size=(~token_mask).sum())
  if per_token_adv:
    advantages[~token_mask] = np.nan
  else:
    advantages[~token_mask.any(1)] = np.inf
  return options, dict(log_probs=log_probs, old_log_probs=old_log_probs,
                       ref_log_probs=ref_log_probs, entropy=entropy,
                       advantages=advantages, weights=weights, token_mask=token_mask)


@functools.lru_cache(maxsize=None)
def _jit_policy_loss(mode, dual_clip, kl_estimator, global_z, weighted, per_token_adv):
  del per_token_adv  # part of the cache key only: the shapes differ

  def fn(log_probs, old_log_probs, ref_log_probs, entropy, advantages, weights, token_mask):
    weights = weights if weighted else None
    normalizer = (losses.global_normalizer(token_mask, mode, weights) if global_z
                  else None)

    def loss_fn(log_probs, entropy):
      return losses.policy_loss(
          log_probs, old_log_probs, advantages, token_mask, ref_log_probs=ref_log_probs,
          sample_weights=weights, dual_clip=dual_clip, kl_coef=0.1,
          kl_estimator=kl_estimator, entropy=entropy, entropy_coef=0.01, mode=mode,
          normalizer=normalizer)

    (loss, metrics), grads = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)(
        log_probs, entropy)
    aggregated = losses.aggregate_loss(old_log_probs, token_mask, mode,
                                       sample_weights=weights, normalizer=normalizer)
    return loss, metrics, grads, aggregated

  return jax.jit(fn)


@FUZZ
@hypothesis.given(options_and_batch=loss_batches())
def test_policy_loss_and_aggregate_loss(options_and_batch):
  """Every aggregation mode: finite loss, metrics and gradients whatever the
  padding holds; gradients 0 on padding; an all-masked batch gives exactly 0."""
  options, batch = options_and_batch
  loss, metrics, grads, aggregated = _jit_policy_loss(*options)(
      batch["log_probs"], batch["old_log_probs"], batch["ref_log_probs"], batch["entropy"],
      batch["advantages"], batch["weights"], batch["token_mask"])
  assert np.shape(loss) == () and np.shape(aggregated) == ()
  _assert_finite((loss, metrics, grads, aggregated), f"policy_loss {options}")
  mask = batch["token_mask"]
  for grad in grads:
    np.testing.assert_array_equal(np.asarray(grad)[~mask], 0.0)
  if not mask.any():
    assert float(loss) == 0.0 and float(aggregated) == 0.0
