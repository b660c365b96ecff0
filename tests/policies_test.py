"""Tests for recal_jax.policies: shapes, normalisation, parsing, sampling."""

import itertools

from absl.testing import absltest
from absl.testing import parameterized
import chex
import jax
import jax.numpy as jnp
import numpy as np

from recal_jax import policies

FEATURE_DIM = 6
ARM_MODELS = ("small", "large", "small", "coder")
ARM_STRATEGIES = ("direct", "direct", "cot", "direct")


def _token_policy():
  return policies.TokenPolicy.for_arms(ARM_MODELS, ARM_STRATEGIES,
                                       hidden_dims=(16,), state_dim=16,
                                       token_embedding_dim=8)


def _features(n, seed=0):
  return jax.random.normal(jax.random.key(seed), (n, FEATURE_DIM))


class CategoricalPolicyTest(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    self.policy = policies.CategoricalPolicy(num_arms=4, hidden_dims=(16,),
                                             embedding_dim=8)
    self.params = self.policy.init(jax.random.key(0), FEATURE_DIM)
    self.features = _features(5)

  def test_shapes_and_normalisation(self):
    logits = self.policy.logits(self.params, self.features)
    chex.assert_shape(logits, (5, 4))
    probabilities = self.policy.action_distribution(self.params, self.features)
    np.testing.assert_allclose(probabilities.sum(-1), np.ones(5), rtol=1e-6)
    routes = self.policy.sample(self.params, self.features, jax.random.key(1))
    chex.assert_shape([routes.tokens, routes.log_probs, routes.token_mask], (5, 1))
    chex.assert_shape(routes.arm_indices, (5,))
    self.assertTrue(bool(routes.token_mask.all()))
    expected = np.log(probabilities[np.arange(5), routes.arm_indices])
    np.testing.assert_allclose(routes.log_probs[:, 0], expected, rtol=1e-5, atol=1e-6)

  @chex.variants(with_jit=True, without_jit=True)
  def test_log_probs_and_entropy(self):
    tokens = jnp.array([[0], [1], [2], [3], [0]])
    log_probs, entropy = self.variant(self.policy.log_probs_and_entropy)(
        self.params, self.features, tokens)
    probabilities = np.asarray(self.policy.action_distribution(self.params, self.features))
    np.testing.assert_allclose(log_probs[:, 0], np.log(probabilities[np.arange(5), tokens[:, 0]]),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(entropy[:, 0], -(probabilities * np.log(probabilities)).sum(-1),
                               rtol=1e-5)

  def test_greedy_is_argmax_and_parse_is_identity(self):
    routes = self.policy.greedy(self.params, self.features)
    np.testing.assert_array_equal(
        routes.arm_indices, np.argmax(self.policy.logits(self.params, self.features), -1))
    np.testing.assert_array_equal(self.policy.parse_routes(routes.tokens), routes.arm_indices)

  def test_initial_policy_is_near_uniform(self):
    probabilities = self.policy.action_distribution(self.params, self.features)
    np.testing.assert_allclose(probabilities, 0.25, atol=0.05)

  def test_add_arms_keeps_existing_logits(self):
    bigger = policies.CategoricalPolicy(num_arms=6, hidden_dims=(16,), embedding_dim=8)
    params = policies.add_arms(self.params, 2, jax.random.key(3))
    old = self.policy.logits(self.params, self.features)
    new = bigger.logits(params, self.features)
    chex.assert_shape(new, (5, 6))
    np.testing.assert_allclose(new[:, :4], old, rtol=1e-6)


  def test_arm_log_probs_are_the_log_softmax(self):
    policy = policies.CategoricalPolicy(num_arms=5, hidden_dims=(16,), embedding_dim=8)
    params = policy.init(jax.random.key(0), FEATURE_DIM)
    features = _features(3)
    np.testing.assert_allclose(
        policy.arm_log_probs(params, features),
        np.log(policy.action_distribution(params, features)), atol=1e-5)


class TokenPolicyTest(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    self.policy = _token_policy()
    self.params = self.policy.init(jax.random.key(0), FEATURE_DIM)
    self.features = _features(4)
    self.vocab = {name: i for i, name in enumerate(self.policy.vocabulary)}

  def _ids(self, *names):
    return [self.vocab[n] for n in names]

  def test_vocabulary_is_special_strategies_models(self):
    self.assertEqual(self.policy.vocabulary,
                     ("<pad>", "<bos>", "<eos>", "direct", "cot", "small", "large", "coder"))
    self.assertEqual(self.policy.num_arms, 4)
    self.assertEqual(self.policy.route_length, 3)

  def test_arm_log_probs_equal_teacher_forced_route_log_probs(self):
    # Shared-prefix scoring must equal scoring each arm's full route alone.
    got = jax.jit(self.policy.arm_log_probs)(self.params, self.features)
    q, a = self.features.shape[0], self.policy.num_arms
    routes = jnp.asarray([self.policy.route_tokens(i) for i in range(a)], jnp.int32)
    log_probs, _ = self.policy.log_probs_and_entropy(
        self.params, jnp.repeat(self.features, a, 0), jnp.tile(routes, (q, 1)))
    np.testing.assert_allclose(got, log_probs.sum(-1).reshape(q, a), atol=1e-5)
    self.assertTrue((np.exp(got).sum(1) <= 1 + 1e-5).all())  # the rest is malformed

  def test_sequence_probabilities_sum_to_one(self):
    # Every one of the V^3 token sequences, well formed or not, has a
    # probability; together they must sum to 1 for each query.
    v = self.policy.vocab_size
    sequences = jnp.asarray(list(itertools.product(range(v), repeat=3)), jnp.int32)
    for q in range(2):
      features = jnp.repeat(self.features[q:q + 1], len(sequences), axis=0)
      log_probs, _ = self.policy.log_probs_and_entropy(self.params, features, sequences)
      np.testing.assert_allclose(jnp.exp(log_probs.sum(-1)).sum(), 1.0, rtol=1e-4)

  def test_next_token_distributions_sum_to_one(self):
    tokens = jnp.zeros((4, 3), jnp.int32)
    probabilities = self.policy.next_token_distribution(self.params, self.features, tokens)
    chex.assert_shape(probabilities, (4, 3, self.policy.vocab_size))
    np.testing.assert_allclose(probabilities.sum(-1), np.ones((4, 3)), rtol=1e-5)

  @chex.variants(with_jit=True, without_jit=True)
  def test_sampled_log_probs_match_teacher_forcing(self):
    routes = self.variant(self.policy.sample)(self.params, self.features, jax.random.key(2))
    chex.assert_shape([routes.tokens, routes.log_probs, routes.token_mask], (4, 3))
    log_probs, entropy = self.policy.log_probs_and_entropy(self.params, self.features,
                                                           routes.tokens)
    np.testing.assert_allclose(routes.log_probs, log_probs, rtol=1e-5, atol=1e-6)
    self.assertTrue(bool((entropy >= 0).all()))
    self.assertTrue(bool((entropy <= np.log(self.policy.vocab_size) + 1e-5).all()))

  def test_sampling_explores_the_full_vocabulary(self):
    # A fresh policy writes malformed routes: the format reward is real.
    features = jnp.repeat(self.features[:1], 2000, axis=0)
    routes = self.policy.sample(self.params, features, jax.random.key(4))
    self.assertGreater(float((routes.arm_indices == -1).mean()), 0.5)
    self.assertEqual(len(np.unique(np.asarray(routes.tokens[:, 0]))), self.policy.vocab_size)

  def test_parse_well_formed_routes(self):
    for arm in range(self.policy.num_arms):
      tokens = jnp.asarray([self.policy.route_tokens(arm)])
      self.assertEqual(int(self.policy.parse_routes(tokens)[0]), arm)
    self.assertEqual(self.policy.detokenize(self.policy.route_tokens(2)), "cot small <eos>")

  @parameterized.named_parameters(
      ("wrong_order", ("small", "direct", "<eos>")),
      ("unknown_combination", ("cot", "large", "<eos>")),
      ("missing_eos", ("direct", "small", "small")),
      ("early_eos", ("<eos>", "direct", "small")),
      ("special_tokens", ("<bos>", "<pad>", "<eos>")),
      ("two_strategies", ("direct", "cot", "<eos>")),
  )
  def test_parse_malformed_routes(self, names):
    tokens = jnp.asarray([self._ids(*names)])
    self.assertEqual(int(self.policy.parse_routes(tokens)[0]), -1)

  def test_parse_batched_shapes(self):
    tokens = jnp.asarray([[self._ids("direct", "small", "<eos>"),
                           self._ids("small", "direct", "<eos>")]])
    np.testing.assert_array_equal(self.policy.parse_routes(tokens), [[0, -1]])

  def test_token_mask_stops_after_first_eos(self):
    tokens = jnp.asarray([self._ids("direct", "small", "<eos>"),
                          self._ids("<eos>", "direct", "small"),
                          self._ids("direct", "<eos>", "<eos>"),
                          self._ids("direct", "small", "coder")])
    np.testing.assert_array_equal(
        self.policy.token_mask(tokens),
        [[1, 1, 1], [1, 0, 0], [1, 1, 0], [1, 1, 1]])

  def test_greedy_matches_argmax_decoding(self):
    routes = self.policy.greedy(self.params, self.features)
    probabilities = self.policy.next_token_distribution(self.params, self.features,
                                                        routes.tokens)
    np.testing.assert_array_equal(routes.tokens, np.argmax(probabilities, -1))

  def test_name_collisions_are_rejected(self):
    with self.assertRaisesRegex(ValueError, "collide"):
      policies.TokenPolicy.for_arms(("direct",), ("direct",))


BOTH_POLICIES = (
    ("categorical", lambda: policies.CategoricalPolicy(num_arms=4, hidden_dims=(16,),
                                                       embedding_dim=8)),
    ("token", _token_policy))


class RepeatsTest(parameterized.TestCase):
  """`repeats=R`: each query encoded once, its routes as if its features were
  repeated R times (what `rollout.sample_routes` and the learner rely on)."""

  @parameterized.named_parameters(*BOTH_POLICIES)
  def test_repeats_equal_repeated_features(self, make):
    policy, repeats = make(), 3
    params = policy.init(jax.random.key(0), FEATURE_DIM)
    features = _features(4)
    repeated = jnp.repeat(features, repeats, axis=0)
    rng = jax.random.key(7)
    once = jax.jit(lambda p, f: policy.sample(p, f, rng, repeats=repeats))(params, features)
    every = jax.jit(lambda p, f: policy.sample(p, f, rng))(params, repeated)
    chex.assert_shape(once.arm_indices, (12,))
    np.testing.assert_array_equal(once.tokens, every.tokens)
    np.testing.assert_allclose(once.log_probs, every.log_probs, rtol=1e-5, atol=1e-6)
    log_probs, entropy = policy.log_probs_and_entropy(params, features, once.tokens,
                                                      repeats=repeats)
    expected = policy.log_probs_and_entropy(params, repeated, once.tokens)
    np.testing.assert_allclose(log_probs, expected[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(entropy, expected[1], rtol=1e-5, atol=1e-6)

  @parameterized.named_parameters(*BOTH_POLICIES)
  def test_query_network_runs_once_per_query(self, make):
    """The first dense layer of the query encoder sees [B, D], not [B * R, D]."""
    policy, repeats = make(), 8
    params = policy.init(jax.random.key(0), FEATURE_DIM)
    features = _features(4)
    tokens = policy.sample(params, features, jax.random.key(1), repeats=repeats).tokens
    jaxpr = jax.make_jaxpr(lambda p: policy.log_probs_and_entropy(
        p, features, tokens, repeats=repeats))(params)
    rows = [eqn.invars[0].aval.shape[0] for eqn in jaxpr.jaxpr.eqns
            if eqn.primitive.name == "dot_general"
            and eqn.invars[0].aval.shape[-1] == FEATURE_DIM]
    self.assertEqual(rows, [4])


class MakePolicyTest(absltest.TestCase):

  def test_make_policy_from_config(self):
    import ml_collections  # pylint: disable=import-outside-toplevel

    class Table:
      num_arms = 4
      arm_models = ARM_MODELS
      arm_strategies = ARM_STRATEGIES

    config = ml_collections.ConfigDict(dict(
        kind="categorical", hidden_dims=(8,), embedding_dim=4, state_dim=8,
        token_embedding_dim=4))
    self.assertIsInstance(policies.make_policy(config, Table), policies.CategoricalPolicy)
    config.kind = "token"
    self.assertIsInstance(policies.make_policy(config, Table), policies.TokenPolicy)
    config.kind = "nope"
    with self.assertRaisesRegex(ValueError, "policy.kind"):
      policies.make_policy(config, Table)


if __name__ == "__main__":
  absltest.main()
