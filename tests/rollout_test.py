"""Tests for recal_jax.rollout: shapes, group ids, lookups, live environments."""

from absl.testing import absltest
import chex
import jax
import jax.numpy as jnp
import numpy as np

from recal_jax import policies
from recal_jax import rewards
from recal_jax import rollout
from recal_jax.data import synthetic

NUM_QUERIES, GROUP_SIZE, COST_SCALE = 12, 5, 0.01


def _table_with_gaps():
  """A small synthetic table where some (query, arm) outcomes are not logged."""
  table = synthetic.make_synthetic(200, seed=1, feature_dim=8)
  mask = np.ones_like(table.outcome_mask)
  mask[::3, 1] = False
  mask[1::4, 4] = False
  import dataclasses  # pylint: disable=import-outside-toplevel
  return dataclasses.replace(table, outcome_mask=mask).validate()


class RolloutTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.table = _table_with_gaps()
    self.device_table = rollout.device_table(self.table)
    self.query_indices = jnp.arange(3, 3 + NUM_QUERIES, dtype=jnp.int32)
    self.categorical = policies.CategoricalPolicy(self.table.num_arms, hidden_dims=(16,),
                                                  embedding_dim=8)
    self.token = policies.TokenPolicy.for_arms(self.table.arm_models,
                                               self.table.arm_strategies,
                                               hidden_dims=(16,), state_dim=16)

  def _sample(self, policy, seed=0):
    params = policy.init(jax.random.key(seed), self.table.feature_dim)
    fn = jax.jit(lambda p, q, r: rollout.sample_rollouts(
        policy, p, self.device_table, q, r, group_size=GROUP_SIZE, cost_scale=COST_SCALE))
    return params, fn(params, self.query_indices, jax.random.key(seed + 1))

  def test_shapes_and_group_ids(self):
    for policy in (self.categorical, self.token):
      _, batch = self._sample(policy)
      n, t = NUM_QUERIES * GROUP_SIZE, policy.route_length
      chex.assert_shape([batch.tokens, batch.old_log_probs, batch.token_mask], (n, t))
      chex.assert_shape(batch.components, (n, rewards.NUM_COMPONENTS))
      chex.assert_shape(batch.features, (n, self.table.feature_dim))
      chex.assert_shape([batch.query_indices, batch.arm_indices, batch.group_ids,
                         batch.dataset_ids, batch.mask, batch.score, batch.cost,
                         batch.format_ok], (n,))
      np.testing.assert_array_equal(batch.group_ids,
                                    np.repeat(np.arange(NUM_QUERIES), GROUP_SIZE))
      np.testing.assert_array_equal(batch.query_indices,
                                    np.repeat(self.query_indices, GROUP_SIZE))
      np.testing.assert_array_equal(batch.dataset_ids,
                                    self.table.dataset_ids[batch.query_indices])
      np.testing.assert_array_equal(batch.features,
                                    self.table.features[batch.query_indices])

  def test_lookups_match_the_table(self):
    for policy in (self.categorical, self.token):
      _, batch = self._sample(policy)
      q, a = np.asarray(batch.query_indices), np.asarray(batch.arm_indices)
      well_formed = a >= 0
      logged = np.zeros_like(well_formed)
      logged[well_formed] = self.table.outcome_mask[q[well_formed], a[well_formed]]
      expect = lambda values: np.where(
          logged, values[q, np.maximum(a, 0)], 0.0)
      np.testing.assert_allclose(batch.score, expect(self.table.score))
      np.testing.assert_allclose(batch.cost, expect(self.table.cost))
      np.testing.assert_allclose(batch.format_ok, expect(self.table.format_ok))
      # Unlogged arms are masked out; malformed routes stay in (format 0).
      np.testing.assert_array_equal(batch.mask, ~well_formed | logged)
      np.testing.assert_array_equal(batch.token_mask.any(-1), batch.mask)
      np.testing.assert_allclose(
          batch.components,
          rewards.routing_components(batch.format_ok, batch.score, batch.cost,
                                     cost_scale=COST_SCALE))

  def test_masked_and_malformed_rows_occur(self):
    _, categorical = self._sample(self.categorical)
    # The categorical policy never draws an arm with no logged outcome (a hole in
    # the log, issue 13 item 8): every rollout counts. The token router can.
    self.assertTrue(bool(categorical.mask.all()))
    rows = np.asarray(categorical.query_indices)
    self.assertTrue(self.table.outcome_mask[rows, np.asarray(categorical.arm_indices)].all())
    _, token = self._sample(self.token)
    malformed = np.asarray(token.arm_indices) < 0
    self.assertTrue(malformed.any())
    np.testing.assert_array_equal(np.asarray(token.components)[malformed], 0.0)
    self.assertTrue(np.asarray(token.mask)[malformed].all())

  def test_old_log_probs_are_the_policy_log_probs(self):
    params, batch = self._sample(self.token)
    log_probs, _ = self.token.log_probs_and_entropy(params, batch.features, batch.tokens)
    np.testing.assert_allclose(batch.old_log_probs, log_probs, rtol=1e-5, atol=1e-6)

  def test_logged_environment_reproduces_the_in_jit_lookup(self):
    for policy in (self.categorical, self.token):
      params, in_jit = self._sample(policy)
      env = rollout.LoggedEnvironment(self.table)
      self.assertIsInstance(env, rollout.LiveEnvironment)
      live = rollout.collect_rollouts(
          policy, params, self.device_table, self.query_indices, jax.random.key(1), env,
          group_size=GROUP_SIZE, cost_scale=COST_SCALE)
      chex.assert_trees_all_close(live, in_jit)
      # Only well-formed routes are sent to the environment.
      self.assertEqual(env.num_calls, int((np.asarray(in_jit.arm_indices) >= 0).sum()))

  def test_query_environment_rules(self):
    calls = []

    def env(query_indices, arm_indices):
      calls.append(np.asarray(arm_indices))
      n = len(arm_indices)
      return rollout.Outcomes(score=np.full(n, 0.5, np.float32),
                              format_ok=np.ones(n, np.float32),
                              cost=np.full(n, 2.0, np.float32),
                              available=np.array([True, False][:n]))

    out = rollout.query_environment(env, np.array([0, 1, 2]), np.array([-1, 3, 4]))
    np.testing.assert_array_equal(calls[0], [3, 4])
    np.testing.assert_allclose(out.score, [0.0, 0.5, 0.5])
    np.testing.assert_allclose(out.cost, [0.0, 2.0, 2.0])
    np.testing.assert_array_equal(out.available, [True, True, False])

  def test_query_environment_rejects_non_finite_outcomes(self):
    def env(query_indices, arm_indices):
      n = len(arm_indices)
      return rollout.Outcomes(score=np.full(n, np.nan, np.float32),
                              format_ok=np.ones(n, np.float32),
                              cost=np.zeros(n, np.float32), available=np.ones(n, bool))

    with self.assertRaisesRegex(ValueError, "non-finite score"):
      rollout.query_environment(env, np.array([5]), np.array([0]))

  def test_logged_environment_rejects_malformed_arms(self):
    with self.assertRaisesRegex(ValueError, "malformed"):
      rollout.LoggedEnvironment(self.table)(np.array([0]), np.array([-1]))


if __name__ == "__main__":
  absltest.main()
