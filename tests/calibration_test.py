"""Tests of recal_jax.calibration against numpy references."""

import functools

from absl.testing import absltest
from absl.testing import parameterized
import chex
import jax
import jax.numpy as jnp
import numpy as np

from recal_jax import calibration


def np_variance_weights(x, ids, mask, h, power, w_min, w_max):
  groups = np.unique(ids[mask > 0])
  hs = {}
  for g in groups:
    v = x[(ids == g) & (mask > 0)]
    if h == "std":
      hs[g] = v.std()
    elif h == "bernoulli":
      p = np.clip(v.mean(), 0, 1)
      hs[g] = np.sqrt(p * (1 - p))
    else:
      hs[g] = v.std() ** power
  mean_h = np.mean(list(hs.values()))
  out = np.zeros_like(x)
  for i, g in enumerate(ids):
    if mask[i] > 0:
      out[i] = np.clip(hs[g] / mean_h, w_min, w_max) if mean_h > 0 else 1.0
  return out


class VarianceWeightsTest(chex.TestCase, parameterized.TestCase):

  def setUp(self):
    super().setUp()
    rng = np.random.default_rng(0)
    self.ids = rng.integers(0, 7, 50).astype(np.int32)
    self.x = (rng.random(50) < 0.4 + 0.08 * self.ids).astype(np.float32)
    self.mask = (rng.random(50) < 0.9).astype(np.float32)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.product(h=("std", "bernoulli", "power"), clip=((0.1, 3.0), (0.0, 1.5)))
  def test_matches_numpy(self, h, clip):
    fn = self.variant(functools.partial(calibration.variance_weights, num_groups=7, h=h,
                                        power=2.0, w_min=clip[0], w_max=clip[1]))
    per_rollout, per_group = fn(self.x, self.ids, mask=self.mask)
    want = np_variance_weights(self.x, self.ids, self.mask, h, 2.0, *clip)
    np.testing.assert_allclose(per_rollout, want, rtol=1e-5, atol=1e-6)
    self.assertEqual(per_group.shape, (7,))

  def test_no_spread_anywhere_gives_unit_weights(self):
    x = np.ones(8, np.float32)
    w, _ = calibration.variance_weights(x, np.repeat(np.arange(2), 4), 2)
    np.testing.assert_array_equal(w, 1.0)

  def test_absent_groups_and_padding_get_zero(self):
    w, per_group = calibration.variance_weights(
        jnp.array([1., 0., 1., 1.]), jnp.array([0, 0, 2, 2]), 4, jnp.array([1., 1., 1., 0.]))
    np.testing.assert_array_equal(np.asarray(per_group)[[1, 3]], 0.0)
    self.assertEqual(float(w[3]), 0.0)

  def test_bad_h(self):
    with self.assertRaisesRegex(ValueError, "h must be one of"):
      calibration.variance_weights(jnp.zeros(3), jnp.zeros(3, jnp.int32), 1, h="var")


class DatasetNormTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_batch_normalize_matches_numpy(self):
    rng = np.random.default_rng(1)
    x = rng.normal(size=30).astype(np.float32) * np.repeat([1., 10., 100.], 10)
    d = np.repeat(np.arange(3), 10).astype(np.int32)
    mask = np.ones(30, np.float32)
    mask[[3, 17]] = 0
    got = self.variant(functools.partial(calibration.dataset_normalize, num_datasets=4))(
        x, d, mask=mask)
    for k in range(3):
      rows = (d == k) & (mask > 0)
      want = (x[rows] - x[rows].mean()) / (x[rows].std() + 1e-6)
      np.testing.assert_allclose(np.asarray(got)[rows], want, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(got)[mask == 0], 0.0)

  def test_balance_weights(self):
    # dataset 0 has 3 valid rows, dataset 1 has 1, dataset 2 is absent:
    # n_valid = 4, D_present = 2 -> b = 4 / (2 * 3) and 4 / (2 * 1).
    w = calibration.dataset_balance_weights(jnp.array([0, 0, 0, 1, 1]), 3,
                                            jnp.array([1., 1., 1., 1., 0.]))
    np.testing.assert_allclose(w, [2 / 3, 2 / 3, 2 / 3, 2.0, 0.0], rtol=1e-6)
    self.assertAlmostEqual(float(w.sum()), 4.0, places=5)


class RunningStatsTest(parameterized.TestCase):

  def test_first_update_is_debiased_batch_statistics(self):
    init, update = calibration.running_dataset_stats(2, decay=0.99)
    x = jnp.array([1., 3., 10., 20.])
    state = update(init(), x, jnp.array([0, 0, 1, 1]))
    mean, std = calibration.running_mean_std(state)
    np.testing.assert_allclose(mean, [2.0, 15.0], rtol=1e-5)
    np.testing.assert_allclose(std, [1.0, 5.0], rtol=1e-3)
    np.testing.assert_array_equal(state.count, [1, 1])

  def test_ema_matches_numpy_and_absent_dataset_untouched(self):
    decay = 0.9
    rng = np.random.default_rng(2)
    state = calibration.init_dataset_stats(3)
    m, s, c = np.zeros(3), np.zeros(3), np.zeros(3)
    update = jax.jit(functools.partial(calibration.update_dataset_stats, decay=decay))
    for step in range(5):
      x = rng.normal(size=12).astype(np.float32)
      d = np.array([0] * 6 + [1] * 6 if step % 2 else [0] * 12, np.int32)
      state = update(state, x, d)
      for k in range(3):
        if (d == k).any():
          m[k] = decay * m[k] + (1 - decay) * x[d == k].mean()
          s[k] = decay * s[k] + (1 - decay) * (x[d == k] ** 2).mean()
          c[k] = decay * c[k] + (1 - decay)
    np.testing.assert_allclose(state.mean, m, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(state.mean_sq, s, rtol=1e-5)
    np.testing.assert_allclose(state.debias, c, rtol=1e-5)
    np.testing.assert_array_equal(state.count, [5, 2, 0])
    mean, std = calibration.running_mean_std(state)
    self.assertEqual((float(mean[2]), float(std[2])), (0.0, 1.0))  # never seen
    out = calibration.normalize_with_stats(state, jnp.array([m[0] / c[0]]), jnp.array([0]))
    np.testing.assert_allclose(out, [0.0], atol=1e-4)

  def test_cross_device_update_equals_global_batch(self):
    x = np.arange(16, dtype=np.float32)
    d = (np.arange(16) % 3).astype(np.int32)
    want = calibration.update_dataset_stats(calibration.init_dataset_stats(3), x, d)
    _, update = calibration.running_dataset_stats(3, axis_name="i")
    init_state = calibration.init_dataset_stats(3)
    got = jax.pmap(lambda x, d: update(init_state, x, d), axis_name="i")(
        x.reshape(4, 4), d.reshape(4, 4))
    got = jax.device_get(got)
    for field in ("mean", "mean_sq", "debias"):
      for dev in range(4):
        np.testing.assert_allclose(getattr(got, field)[dev], getattr(want, field), rtol=1e-6)

  def test_bad_decay(self):
    with self.assertRaisesRegex(ValueError, "decay"):
      calibration.update_dataset_stats(calibration.init_dataset_stats(1), jnp.zeros(2),
                                       jnp.zeros(2, jnp.int32), decay=1.0)


if __name__ == "__main__":
  absltest.main()
