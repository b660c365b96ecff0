"""Exactness of the core in float32: zero-spread groups, precision at scale."""

import itertools

from absl.testing import absltest
from absl.testing import parameterized
import jax
import numpy as np

from recal_jax import advantage
from recal_jax import calibration

# Values whose float32 mean over n copies is not the value itself (issue 11).
AWKWARD = ((-1.8136706, 5), (-2.684115, 10))


def constant_groups(group_size, num_groups, seed=0):
  """[N] values, each group of `group_size` rows one random float32 value."""
  rng = np.random.default_rng(seed)
  values = rng.normal(size=num_groups).astype(np.float32) * 10 ** rng.uniform(-3, 3, num_groups)
  return (np.repeat(values, group_size).astype(np.float32),
          np.repeat(np.arange(num_groups), group_size).astype(np.int32))


ESTIMATOR_OPTIONS = [
    dict(std_scaling=s, ddof=d, singleton=o)
    for s, d, o in itertools.product(("group", "batch", "none"), (0, 1), ("zero", "raw"))]


class ZeroSpreadTest(parameterized.TestCase):
  """A group whose rewards are all equal gets A = 0 bit-exactly (item 1)."""

  @parameterized.parameters(*AWKWARD)
  def test_issue_values(self, value, size):
    x = np.full(size, value, np.float32)
    ids = np.zeros(size, np.int32)
    for group_size in (None, size):
      np.testing.assert_array_equal(
          advantage.grpo_advantages(x, ids, 1, group_size=group_size), 0.0)
      np.testing.assert_array_equal(
          advantage.rloo_advantages(x, ids, 1, group_size=group_size), 0.0)

  def test_every_estimator_ragged(self):
    sizes = (1, 2, 5, 10, 16, 64, 1000)
    parts = [constant_groups(size, 1, seed=size)[0] for size in sizes]
    spread = np.linspace(-1, 1, 7).astype(np.float32)  # one group with spread
    x = np.concatenate([spread] + parts)
    ids = np.repeat(np.arange(len(sizes) + 1), (7,) + sizes).astype(np.int32)
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(x))  # any order
    x, ids = x[perm], ids[perm]
    zero = ids > 1  # group 1 is a singleton: 'raw' gives it its value
    for opts in ESTIMATOR_OPTIONS:
      a = np.asarray(advantage.grpo_advantages(x, ids, len(sizes) + 1, **opts))
      np.testing.assert_array_equal(a[zero], 0.0, err_msg=str(opts))
    a = np.asarray(advantage.rloo_advantages(x, ids, len(sizes) + 1))
    np.testing.assert_array_equal(a[zero], 0.0)

  @parameterized.parameters(5, 10, 1000)
  def test_estimators_contiguous(self, group_size):
    x, ids = constant_groups(group_size, 12, seed=group_size)
    x[:group_size] = np.linspace(-1, 1, group_size)
    for opts in ESTIMATOR_OPTIONS[::3]:
      a = np.asarray(advantage.grpo_advantages(x, ids, 12, group_size=group_size, **opts))
      np.testing.assert_array_equal(a[group_size:], 0.0, err_msg=str(opts))
    a = np.asarray(advantage.rloo_advantages(x, ids, 12, group_size=group_size))
    np.testing.assert_array_equal(a[group_size:], 0.0)
    stats = advantage.group_stats(x, ids, 12, group_size=group_size)
    np.testing.assert_array_equal(stats.std[1:], 0.0)
    np.testing.assert_array_equal(stats.mean[1:], x[group_size::group_size])

  def test_recal_keeps_zero_through_dataset_normalisation(self):
    """The issue's converged-router batch: every rollout of a group chose the
    same arm (identical components) in half the groups. Those rows get 0
    exactly, for every method, both layouts, gated or not, batch or running
    dataset statistics."""
    rng = np.random.default_rng(0)
    g, b = 10, 40
    n = g * b
    ids = np.repeat(np.arange(b), g).astype(np.int32)
    dids = np.repeat(rng.integers(0, 3, b), g).astype(np.int32)
    r = np.stack([(rng.random(n) < .9), (rng.random(n) < .5),
                  -rng.gamma(2.0, .3, n)], 1).astype(np.float32)
    same = np.repeat(rng.random(b) < .5, g)
    arm = np.stack([np.ones(b), (rng.random(b) < .5),
                    np.resize([-1.8136706, -2.684115], b)], 1)
    r[same] = np.repeat(arm, g, axis=0).astype(np.float32)[same]
    configs = {name: advantage.method_config(name)
               for name in ("recal", "gdpo", "router_r1")}
    configs["recal_running"] = advantage.method_config("recal", dataset_norm="running")
    configs["recal_unconditional_ddof1"] = advantage.method_config(
        "recal", conditional=False, ddof=1, balance_datasets=True)
    configs["recal_whiten_rloo"] = advantage.method_config("recal", whiten=True,
                                                           estimator="rloo")
    for (name, cfg), layout in itertools.product(configs.items(), (None, g)):
      out = advantage.recal_advantages(
          r, ids, b, dids, 3, config=cfg, group_size=layout,
          dataset_state=calibration.init_dataset_stats(3))
      a = np.asarray(out.advantages)
      np.testing.assert_array_equal(a[same], 0.0, err_msg=f"{name} {layout}")
      self.assertGreater(np.abs(a[~same]).max(), 0.1, msg=name)

  def test_gdpo_zero_spread(self):
    x, ids = constant_groups(10, 8)
    r = np.stack([x, x[::-1].copy(), -x], 1)
    r[:10] = np.random.default_rng(1).normal(size=(10, 3))
    for layout in (None, 10):
      a = np.asarray(advantage.gdpo_advantages(r, ids, 8, group_size=layout))
      np.testing.assert_array_equal(a[10:], 0.0)


def np64_recal(r, ids, dids, num_groups, num_datasets, eps=1e-6):
  """method_config('recal') in float64, vectorised (all rows valid)."""
  r = r.astype(np.float64)

  def stats(x, seg, num, member):
    c = np.bincount(seg, member, num)
    mean = np.bincount(seg, member * x, num) / np.maximum(c, 1)
    var = np.bincount(seg, member * (x - mean[seg]) ** 2, num) / np.maximum(c, 1)
    return mean, np.sqrt(var), c

  mean, std, _ = stats(r[:, 2], dids, num_datasets, np.ones(len(ids)))
  cost = (r[:, 2] - mean[dids]) / (std[dids] + eps)
  fmt, correct = r[:, 0] >= .5, r[:, 1] >= .5
  adv = np.zeros(len(ids))
  for col, member, w in ((r[:, 0], np.ones(len(ids)), 1.0), (r[:, 1], fmt * 1.0, 1.0),
                         (cost, (fmt & correct) * 1.0, 0.5)):
    mean, std, _ = stats(col, ids, num_groups, member)
    a = np.where(std[ids] > 1e-12, (col - mean[ids]) / (std[ids] + eps), 0.0)
    adv += w * member * a
  p, _, count = stats(r[:, 1], ids, num_groups, np.ones(len(ids)))
  h = np.sqrt(np.clip(p, 0, 1) * (1 - np.clip(p, 0, 1)))
  omega = np.clip(h / h[count > 0].mean(), 0.1, 3.0)
  mean, std, _ = stats(adv, dids, num_datasets, np.ones(len(ids)))
  adv = np.where(adv != 0, (adv - mean[dids]) / (std[dids] + eps), 0.0)
  return adv, omega[ids]


class PrecisionAtScaleTest(absltest.TestCase):
  """N = 2^20 rows in 7 datasets: both layouts within 1e-5 of float64 (item 4)."""

  def test_recal_at_2_pow_20(self):
    rng = np.random.default_rng(0)
    g, b, d = 8, 1 << 17, 7
    n = g * b
    ids = np.repeat(np.arange(b), g).astype(np.int32)
    dids = np.repeat(rng.integers(0, d, b), g).astype(np.int32)
    r = np.stack([(rng.random(n) < .9), (rng.random(n) < .5),
                  -3.0 - rng.gamma(2.0, .3, n)], 1).astype(np.float32)
    want_adv, want_w = np64_recal(r, ids, dids, b, d)
    cfg = advantage.method_config("recal")
    perm = rng.permutation(n)
    for layout, rows in ((g, np.arange(n)), (None, perm)):
      out = advantage.recal_advantages(r[rows], ids[rows], b, dids[rows], d,
                                       config=cfg, group_size=layout)
      err = np.abs(np.asarray(out.advantages, np.float64) - want_adv[rows]).max()
      self.assertLess(err, 1e-5, msg=f"group_size={layout}")
      np.testing.assert_allclose(out.weights, want_w[rows], atol=1e-5)
      jax.clear_caches()


if __name__ == "__main__":
  absltest.main()
