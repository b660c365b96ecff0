"""Tests for recal_jax.rewards: golden values, numpy references, checks."""

import functools

from absl.testing import absltest
from absl.testing import parameterized
import chex
import hypothesis
from hypothesis import strategies as st
import jax
from jax.experimental import checkify
import jax.numpy as jnp
import numpy as np

from recal_jax import rewards

_TOL = dict(rtol=1e-6, atol=1e-6)


def np_router_r1(components, cost_weight=0.5, correct_threshold=0.5,
                 format_threshold=0.5):
  out = []
  for fmt, correctness, cost in np.float64(components).reshape(-1, 3):
    if not fmt >= format_threshold:
      out.append(-1.0)
    elif correctness >= correct_threshold:
      out.append(correctness + cost_weight * cost)
    else:
      out.append(correctness)
  return np.reshape(out, components.shape[:-1])


# Five rollouts: (format_ok, score, cost_usd) with cost_scale = 0.02:
#   0: (1, 1.0, 0.004) -> components (1, 1.0, -0.2)
#   1: (1, 0.0, 0.010) -> (1, 0.0, -0.5)
#   2: (0, 1.0, 0.002) -> (0, 1.0, -0.1)
#   3: (1, 0.5, 0.020) -> (1, 0.5, -1.0)   score at the threshold
#   4: (1, 0.3, 0.000) -> (1, 0.3,  0.0)
FORMAT_OK = np.array([True, True, False, True, True])
SCORE = np.array([1.0, 0.0, 1.0, 0.5, 0.3], np.float32)
COST_USD = np.array([0.004, 0.01, 0.002, 0.02, 0.0], np.float32)
GOLDEN_COMPONENTS = np.array(
    [[1, 1.0, -0.2], [1, 0.0, -0.5], [0, 1.0, -0.1], [1, 0.5, -1.0],
     [1, 0.3, 0.0]], np.float32)


class ComponentsTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_golden(self):
    fn = self.variant(functools.partial(rewards.routing_components,
                                        cost_scale=0.02))
    components = fn(FORMAT_OK, SCORE, COST_USD)
    self.assertEqual(components.dtype, jnp.float32)
    np.testing.assert_allclose(components, GOLDEN_COMPONENTS, **_TOL)

  def test_column_constants_and_batch_shape(self):
    self.assertEqual(rewards.COMPONENTS[rewards.FORMAT], "format")
    self.assertEqual(rewards.COMPONENTS[rewards.CORRECTNESS], "correctness")
    self.assertEqual(rewards.COMPONENTS[rewards.COST], "cost")
    components = rewards.routing_components(
        np.ones((2, 4)), np.full((2, 4), 0.25), np.full((2, 4), 3.0))
    chex.assert_shape(components, (2, 4, 3))
    np.testing.assert_allclose(components[1, 2], [1.0, 0.25, -3.0])

  def test_bad_inputs(self):
    with self.assertRaisesRegex(ValueError, "cost_usd"):
      jax.jit(rewards.routing_components)(np.ones(3), np.ones(3), np.ones(4))
    with self.assertRaisesRegex(ValueError, "cost_scale"):
      rewards.routing_components(np.ones(3), np.ones(3), np.ones(3),
                                 cost_scale=0.0)


class ScalarRewardTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_router_r1_golden(self):
    # 0: correct, cost counts: 1 + 0.5 * -0.2 = 0.9
    # 1: wrong, no cost: 0
    # 2: format failed overrides all: -1
    # 3: score 0.5 >= 0.5 is correct: 0.5 + 0.5 * -1.0 = 0
    # 4: wrong (0.3 < 0.5), free: 0.3
    fn = self.variant(rewards.router_r1_reward)
    np.testing.assert_allclose(fn(GOLDEN_COMPONENTS),
                               [0.9, 0.0, -1.0, 0.0, 0.3], **_TOL)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters((0.5, 0.5), (0.2, 0.8), (0.0, 0.5))
  def test_router_r1_matches_numpy(self, cost_weight, correct_threshold):
    rng = np.random.default_rng(0)
    components = np.stack([
        rng.integers(0, 2, (4, 6)), rng.uniform(size=(4, 6)),
        -rng.uniform(size=(4, 6))], -1).astype(np.float32)
    fn = self.variant(functools.partial(
        rewards.router_r1_reward, cost_weight=cost_weight,
        correct_threshold=correct_threshold))
    np.testing.assert_allclose(
        fn(components),
        np_router_r1(components, cost_weight, correct_threshold), **_TOL)

  def test_router_r1_format_failure_hides_nan(self):
    components = np.array([[0.0, np.nan, np.nan]], np.float32)
    np.testing.assert_array_equal(rewards.router_r1_reward(components),
                                  [-1.0])

  @chex.variants(with_jit=True, without_jit=True)
  def test_summed_reward_golden(self):
    # Unweighted: 1 + 1 - 0.2 = 1.8; 0.5; 0.9; 0.5; 1.3.
    # Weights (0, 2, 1): 2 - 0.2 = 1.8; -0.5; 1.9; 0; 0.6.
    fn = self.variant(rewards.summed_reward)
    np.testing.assert_allclose(fn(GOLDEN_COMPONENTS),
                               [1.8, 0.5, 0.9, 0.5, 1.3], **_TOL)
    np.testing.assert_allclose(
        fn(GOLDEN_COMPONENTS, jnp.array([0.0, 2.0, 1.0])),
        [1.8, -0.5, 1.9, 0.0, 0.6], **_TOL)

  @chex.variants(with_jit=True, without_jit=True)
  def test_pass_predicates(self):
    np.testing.assert_array_equal(
        self.variant(rewards.pass_format)(np.array([0.0, 1.0, np.nan])),
        [0.0, 1.0, 0.0])
    # The threshold is inclusive.
    np.testing.assert_array_equal(
        self.variant(functools.partial(rewards.pass_correctness,
                                       threshold=0.7))(
                                           np.array([0.69, 0.7, 1.0])),
        [0.0, 1.0, 1.0])

  def test_bad_inputs(self):
    with self.assertRaisesRegex(ValueError, "components"):
      jax.jit(rewards.router_r1_reward)(np.zeros((3, 2)))
    with self.assertRaisesRegex(ValueError, "weights"):
      rewards.summed_reward(GOLDEN_COMPONENTS, np.ones(2))

  def test_pmap_matches_single_device(self):
    num_devices = 4
    rng = np.random.default_rng(1)
    components = np.stack([
        rng.integers(0, 2, 8), rng.uniform(size=8), -rng.uniform(size=8)],
                          -1).astype(np.float32)
    sharded = jax.block_until_ready(jax.pmap(rewards.router_r1_reward)(
        components.reshape(num_devices, 2, 3)))
    np.testing.assert_allclose(sharded.reshape(-1),
                               rewards.router_r1_reward(components), **_TOL)


class FiniteCheckTest(parameterized.TestCase):

  def test_finite_passes_through(self):
    out = rewards.check_finite_rewards(jnp.asarray(GOLDEN_COMPONENTS))
    self.assertIsInstance(out, np.ndarray)
    np.testing.assert_array_equal(out, GOLDEN_COMPONENTS)

  def test_names_first_bad_entry(self):
    bad = GOLDEN_COMPONENTS.copy()
    bad[3, 2] = np.inf
    bad[1, 2] = np.nan
    with self.assertRaisesRegex(
        ValueError, r"rewards\[1, 2\] \(component 'cost'\) is nan; 2 of 15"):
      rewards.check_finite_rewards(bad)
    with self.assertRaisesRegex(ValueError, r"advantages\[2\] is -inf"):
      rewards.check_finite_rewards(np.array([0.0, 1.0, -np.inf]),
                                   name="advantages")

  def test_tracer_is_rejected(self):
    with self.assertRaisesRegex(TypeError, "checkified_finite"):
      jax.jit(rewards.check_finite_rewards)(GOLDEN_COMPONENTS)

  def test_checkified_finite_under_jit(self):
    checked = jax.jit(checkify.checkify(rewards.checkified_finite))
    err, out = checked(GOLDEN_COMPONENTS)
    self.assertIsNone(err.get())
    np.testing.assert_array_equal(out, GOLDEN_COMPONENTS)
    bad = GOLDEN_COMPONENTS.copy()
    bad[4, 1] = np.nan
    err, _ = checked(bad)
    self.assertIn("row 4, column 1", err.get())
    with self.assertRaisesRegex(Exception, "row 4, column 1"):
      err.throw()
    err, _ = jax.jit(checkify.checkify(rewards.checkified_finite))(
        np.array([1.0, np.inf, np.nan]))
    self.assertIn("flat index 1", err.get())


class PropertyTest(absltest.TestCase):

  @hypothesis.settings(max_examples=50, deadline=None)
  @hypothesis.given(
      rows=st.lists(st.tuples(st.booleans(), st.booleans(),
                              st.floats(0.0, 1.0, width=32)),
                    min_size=8, max_size=8))
  def test_router_r1_orders_failure_wrong_correct(self, rows):
    # Binary correctness, cost in [-1, 0], defaults: format failure (-1) <
    # wrong (0) < every correct answer (>= 0.5); all in [-1, 1].
    # Fixed length 8 keeps one compiled shape.
    components = np.array([[f, c, -cost] for f, c, cost in rows], np.float32)
    reward = np.asarray(rewards.router_r1_reward(components))
    fmt, correct = components[:, 0] > 0, components[:, 1] > 0
    self.assertTrue(np.isfinite(reward).all())
    self.assertTrue(((reward >= -1) & (reward <= 1)).all())
    np.testing.assert_array_equal(reward[~fmt], -1.0)
    np.testing.assert_array_equal(reward[fmt & ~correct], 0.0)
    self.assertTrue((reward[fmt & correct] >= 0.5).all())


if __name__ == "__main__":
  absltest.main()
