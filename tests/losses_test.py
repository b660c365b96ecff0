"""Tests for recal_jax.losses: numpy references, golden values, sharding."""

import functools

from absl.testing import absltest
from absl.testing import parameterized
import chex
import hypothesis
from hypothesis import strategies as st
import jax
import jax.numpy as jnp
import numpy as np

from recal_jax import losses

MODES = losses.MODES
_TOL = dict(rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------
# numpy references (float64, explicit loops where that is clearer).


def np_surrogate(log_probs, old_log_probs, advantages, eps_low=0.2,
                 eps_high=0.2, dual_clip=None):
  ratio = np.exp(np.float64(log_probs) - old_log_probs)
  adv = advantages[:, None] if advantages.ndim == 1 else advantages
  loss = np.maximum(-adv * ratio, -adv * np.clip(ratio, 1 - eps_low,
                                                 1 + eps_high))
  if dual_clip is not None:
    loss = np.where(adv < 0, np.minimum(loss, -dual_clip * adv), loss)
  return loss


def np_aggregate(per_token, mask, mode, weights=None, normalizer=None,
                 max_tokens=None):
  num_rows, num_tokens = per_token.shape
  weights = np.ones(num_rows) if weights is None else weights
  max_tokens = num_tokens if max_tokens is None else max_tokens
  numerator, z = 0.0, 0.0
  for i in range(num_rows):
    valid = mask[i] != 0
    n_i = valid.sum()
    row_sum = float(np.sum(per_token[i][valid])) if n_i else 0.0
    if mode == "token-mean":
      numerator += weights[i] * row_sum
      z += weights[i] * n_i
    elif mode == "token-sum":
      numerator += weights[i] * row_sum
      z = 1.0
    else:
      if mode == "seq-mean-token-sum":
        row_value = row_sum
      elif mode == "seq-mean-token-mean":
        row_value = row_sum / n_i if n_i else 0.0
      else:
        row_value = row_sum / max_tokens
      numerator += weights[i] * row_value
      z += weights[i] * (n_i > 0)
  if normalizer is not None:
    z = normalizer
  return numerator / z if z > 0 else 0.0


def np_entropy(logits):
  logits = np.float64(logits)
  shifted = logits - logits.max(-1, keepdims=True)
  p = np.exp(shifted) / np.exp(shifted).sum(-1, keepdims=True)
  logp = np.log(np.where(p > 0, p, 1.0))
  return -(p * logp).sum(-1)


def random_inputs(seed, num_rows=8, num_tokens=5, empty_rows=(3,)):
  rng = np.random.default_rng(seed)
  old = np.log(rng.uniform(0.05, 1.0, (num_rows, num_tokens)))
  log_probs = old + rng.normal(0.0, 0.3, (num_rows, num_tokens))
  ref = old + rng.normal(0.0, 0.2, (num_rows, num_tokens))
  adv = rng.normal(size=num_rows)
  lengths = rng.integers(1, num_tokens + 1, num_rows)
  lengths[list(empty_rows)] = 0
  mask = (np.arange(num_tokens)[None] < lengths[:, None]).astype(np.float32)
  weights = rng.uniform(0.1, 2.0, num_rows)
  entropy = rng.uniform(0.0, 2.0, (num_rows, num_tokens))
  f32 = lambda x: np.asarray(x, np.float32)
  return dict(log_probs=f32(log_probs), old_log_probs=f32(old),
              ref_log_probs=f32(ref), advantages=f32(adv), token_mask=mask,
              sample_weights=f32(weights), entropy=f32(entropy))


# A small batch for golden values. ratios: row 0 (1.25, 0.8, 1.0), row 1
# (1.0, 1.5, 0.6); A = (+1, -1); row 0's last token is padding.
GOLDEN_LOG_PROBS = np.log(np.array([[0.5, 0.2, 0.1], [0.3, 0.3, 0.3]],
                                   np.float32))
GOLDEN_OLD = np.log(np.array([[0.4, 0.25, 0.1], [0.3, 0.2, 0.5]], np.float32))
GOLDEN_ADV = np.array([1.0, -1.0], np.float32)
GOLDEN_MASK = np.array([[1, 1, 0], [1, 1, 1]], np.float32)


class SurrogateTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_golden(self):
    # loss = -min(rho A, clip(rho, 0.8, 1.2) A):
    # row 0, A=+1: rho 1.25 -> -min(1.25, 1.2) = -1.2; 0.8 -> -0.8; 1 -> -1
    # row 1, A=-1: rho 1 -> 1; 1.5 -> -min(-1.5, -1.2) = 1.5;
    #              0.6 -> -min(-0.6, -0.8) = 0.8
    loss = self.variant(losses.clipped_surrogate)(
        GOLDEN_LOG_PROBS, GOLDEN_OLD, GOLDEN_ADV)
    np.testing.assert_allclose(
        loss, [[-1.2, -0.8, -1.0], [1.0, 1.5, 0.8]], **_TOL)

  @chex.variants(with_jit=True, without_jit=True)
  def test_golden_dual_clip(self):
    # A = -1, rho = e^2 = 7.389: PPO loss = -min(-7.389, -1.2) = 7.389,
    # dual clip c = 3 caps it at -c A = 3. A = +1 rows are untouched:
    # rho = e^-2 = 0.135 -> -min(0.135, 0.8) = -0.135.
    log_probs = np.array([[2.0], [-2.0]], np.float32)
    old = np.zeros((2, 1), np.float32)
    adv = np.array([-1.0, 1.0], np.float32)
    fn = self.variant(functools.partial(losses.clipped_surrogate,
                                        dual_clip=3.0))
    np.testing.assert_allclose(fn(log_probs, old, adv),
                               [[3.0], [-np.exp(-2.0)]], **_TOL)

  def test_dual_clip_has_zero_gradient_where_capped(self):
    grad = jax.grad(lambda lp: losses.clipped_surrogate(
        lp, jnp.zeros((1, 1)), jnp.array([-1.0]), dual_clip=3.0).sum())(
            jnp.array([[2.0]]))
    np.testing.assert_array_equal(grad, [[0.0]])

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(
      ("symmetric", 0.2, 0.2, None, 1),
      ("clip_higher", 0.2, 0.28, None, 1),
      ("dual_clip", 0.2, 0.2, 3.0, 1),
      ("token_advantages", 0.1, 0.3, 2.0, 2),
  )
  def test_matches_numpy(self, eps_low, eps_high, dual_clip, adv_rank):
    inputs = random_inputs(0)
    adv = inputs["advantages"]
    if adv_rank == 2:
      adv = np.random.default_rng(1).normal(
          size=inputs["log_probs"].shape).astype(np.float32)
    fn = self.variant(functools.partial(
        losses.clipped_surrogate, eps_low=eps_low, eps_high=eps_high,
        dual_clip=dual_clip))
    np.testing.assert_allclose(
        fn(inputs["log_probs"], inputs["old_log_probs"], adv),
        np_surrogate(inputs["log_probs"], inputs["old_log_probs"], adv,
                     eps_low, eps_high, dual_clip), **_TOL)

  @chex.variants(with_jit=True, without_jit=True)
  def test_clip_fraction_golden(self):
    # Clipped term chosen (strictly larger): row 0 token 0 (-1.2 > -1.25)
    # and row 1 token 2 (0.8 > 0.6); row 0 token 2 is padding. 2 / 5.
    fn = self.variant(losses.clip_fraction)
    np.testing.assert_allclose(
        fn(GOLDEN_LOG_PROBS, GOLDEN_OLD, GOLDEN_ADV, GOLDEN_MASK), 0.4,
        **_TOL)

  def test_huge_log_ratio_stays_finite(self):
    loss = losses.clipped_surrogate(jnp.array([[0.0]]),
                                    jnp.array([[-1e4]]), jnp.array([-1.0]))
    self.assertTrue(np.isfinite(loss).all())

  @parameterized.named_parameters(
      ("old_log_probs", dict(old_log_probs=np.zeros((2, 4))),
       "old_log_probs"),
      ("advantages", dict(advantages=np.zeros(3)), "advantages"),
      ("log_probs_rank", dict(log_probs=np.zeros(2),
                              old_log_probs=np.zeros(2)), "log_probs"),
      ("eps_low", dict(eps_low=1.5), "eps_low"),
      ("eps_high", dict(eps_high=-0.1), "eps_high"),
      ("dual_clip", dict(dual_clip=0.9), "dual_clip"),
  )
  def test_bad_inputs_raise_at_trace_time(self, override, name):
    kwargs = dict(log_probs=np.zeros((2, 3)), old_log_probs=np.zeros((2, 3)),
                  advantages=np.zeros(2))
    kwargs.update(override)
    with self.assertRaisesRegex(ValueError, name):
      jax.jit(functools.partial(losses.clipped_surrogate, **kwargs))()


class KLAndEntropyTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_golden(self):
    # logp = 0, ref = log 2 (d = ref - logp = 0.6931):
    # k1 = -0.6931; k2 = 0.5 * 0.6931^2 = 0.2402; k3 = 2 - 0.6931 - 1 = 0.3069
    log_probs = np.zeros((1, 1), np.float32)
    ref = np.full((1, 1), np.log(2.0), np.float32)
    log2 = np.log(2.0)
    for fn, expected in ((losses.kl_k1, -log2), (losses.kl_k2,
                                                  0.5 * log2**2),
                         (losses.kl_k3, 1.0 - log2)):
      np.testing.assert_allclose(self.variant(fn)(log_probs, ref),
                                 [[expected]], **_TOL)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters("k1", "k2", "k3")
  def test_matches_numpy(self, estimator):
    inputs = random_inputs(2)
    lp, ref = np.float64(inputs["log_probs"]), np.float64(
        inputs["ref_log_probs"])
    expected = {"k1": lp - ref, "k2": 0.5 * (lp - ref)**2,
                "k3": np.exp(ref - lp) - (ref - lp) - 1}[estimator]
    fn = self.variant(functools.partial(losses.kl_divergence,
                                        estimator=estimator))
    np.testing.assert_allclose(
        fn(inputs["log_probs"], inputs["ref_log_probs"]), expected,
        rtol=1e-5, atol=1e-5)

  def test_k3_is_nonnegative_and_zero_at_equality(self):
    inputs = random_inputs(3)
    kl = losses.kl_k3(inputs["log_probs"], inputs["ref_log_probs"])
    self.assertTrue((np.asarray(kl) >= 0).all())
    np.testing.assert_array_equal(
        losses.kl_k3(inputs["log_probs"], inputs["log_probs"]), 0.0)

  def test_unknown_estimator_and_shapes(self):
    with self.assertRaisesRegex(ValueError, "'k4'"):
      losses.kl_divergence(np.zeros(2), np.zeros(2), "k4")
    with self.assertRaisesRegex(ValueError, "ref_log_probs"):
      losses.kl_k3(np.zeros((2, 3)), np.zeros((3, 2)))

  @chex.variants(with_jit=True, without_jit=True)
  def test_entropy_golden_and_numpy(self):
    # Uniform over 4 -> log 4; one -inf entry among 3 zeros -> log 3;
    # a near-one-hot row -> ~0.
    logits = np.array([[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, -np.inf],
                       [100.0, 0.0, 0.0, 0.0]], np.float32)
    fn = self.variant(losses.entropy_from_logits)
    np.testing.assert_allclose(fn(logits), [np.log(4.0), np.log(3.0), 0.0],
                               **_TOL)
    rand = np.random.default_rng(4).normal(size=(2, 3, 7)).astype(np.float32)
    np.testing.assert_allclose(fn(rand), np_entropy(rand), **_TOL)

  def test_entropy_gradient_finite_with_masked_vocab(self):
    grad = jax.grad(lambda x: losses.entropy_from_logits(x).sum())(
        jnp.array([[0.0, -jnp.inf, 1.0]]))
    self.assertTrue(np.isfinite(grad).all())


# Golden aggregation. per_token [[1,2,3],[4,5,6],[7,8,9]],
# mask [[1,1,0],[1,0,0],[0,0,0]]: row sums (3, 4, 0), n = (2, 1, 0),
# v = (1, 1, 0); Tmax = 3.
# Unweighted: token-mean 7/3; token-sum 7; seq-mean-token-sum 7/2;
#   seq-mean-token-mean (3/2 + 4)/2 = 2.75; norm (3/3 + 4/3)/2 = 7/6.
# Weights (1, 2, 5): token-mean (3 + 8)/(2 + 2) = 11/4; token-sum 11;
#   seq-mean-token-sum 11/3; seq-mean-token-mean (1.5 + 8)/3 = 9.5/3;
#   norm (1 + 8/3)/3 = 11/9.
GOLDEN_PER_TOKEN = np.arange(1, 10, dtype=np.float32).reshape(3, 3)
GOLDEN_AGG_MASK = np.array([[1, 1, 0], [1, 0, 0], [0, 0, 0]], np.float32)
GOLDEN_WEIGHTS = np.array([1.0, 2.0, 5.0], np.float32)
GOLDEN_AGG = {
    "token-mean": (7 / 3, 11 / 4),
    "token-sum": (7.0, 11.0),
    "seq-mean-token-sum": (3.5, 11 / 3),
    "seq-mean-token-mean": (2.75, 9.5 / 3),
    "seq-mean-token-sum-norm": (7 / 6, 11 / 9),
}


class AggregateTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(*MODES)
  def test_golden(self, mode):
    unweighted, weighted = GOLDEN_AGG[mode]
    fn = self.variant(functools.partial(losses.aggregate_loss, mode=mode))
    np.testing.assert_allclose(fn(GOLDEN_PER_TOKEN, GOLDEN_AGG_MASK),
                               unweighted, **_TOL)
    np.testing.assert_allclose(
        fn(GOLDEN_PER_TOKEN, GOLDEN_AGG_MASK, sample_weights=GOLDEN_WEIGHTS),
        weighted, **_TOL)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.product(mode=MODES, weighted=(False, True))
  def test_matches_numpy(self, mode, weighted):
    inputs = random_inputs(5)
    per_token = np.random.default_rng(6).normal(
        size=inputs["token_mask"].shape).astype(np.float32)
    weights = inputs["sample_weights"] if weighted else None
    fn = self.variant(functools.partial(losses.aggregate_loss, mode=mode,
                                        max_tokens=7))
    np.testing.assert_allclose(
        fn(per_token, inputs["token_mask"], sample_weights=weights),
        np_aggregate(per_token, inputs["token_mask"], mode, weights,
                     max_tokens=7), **_TOL)

  @parameterized.product(mode=MODES, num_parts=(2, 4), weighted=(False, True))
  def test_micro_batch_invariance(self, mode, num_parts, weighted):
    inputs = random_inputs(7, num_rows=8, empty_rows=(3, 6))
    per_token = np.random.default_rng(8).normal(
        size=inputs["token_mask"].shape).astype(np.float32)
    mask = inputs["token_mask"]
    weights = inputs["sample_weights"] if weighted else None
    full = losses.aggregate_loss(per_token, mask, mode,
                                 sample_weights=weights)
    z = losses.global_normalizer(mask, mode, weights)
    parts = []
    for rows in np.split(np.arange(8), num_parts):
      parts.append(losses.aggregate_loss(
          per_token[rows], mask[rows], mode,
          sample_weights=None if weights is None else weights[rows],
          normalizer=z))
    np.testing.assert_allclose(sum(parts), full, rtol=1e-6, atol=1e-6)

  def test_per_part_normaliser_is_not_invariant(self):
    # The bug the global normaliser avoids: token-mean per micro-batch,
    # averaged, is not the full-batch token mean when lengths differ.
    per_token = np.array([[1.0, 1.0], [3.0, 0.0]], np.float32)
    mask = np.array([[1, 1], [1, 0]], np.float32)
    full = losses.aggregate_loss(per_token, mask, "token-mean")  # 5 / 3
    naive = np.mean([losses.aggregate_loss(per_token[i:i + 1],
                                           mask[i:i + 1], "token-mean")
                     for i in range(2)])  # (1 + 3) / 2 = 2
    np.testing.assert_allclose(full, 5 / 3, **_TOL)
    self.assertNotAlmostEqual(float(full), float(naive), places=3)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(*MODES)
  def test_all_masked_is_zero_with_finite_gradient(self, mode):
    per_token = np.ones((3, 4), np.float32)
    mask = np.zeros((3, 4), np.float32)
    fn = self.variant(jax.value_and_grad(functools.partial(
        losses.aggregate_loss, token_mask=mask, mode=mode)))
    value, grad = fn(per_token)
    self.assertEqual(float(value), 0.0)
    np.testing.assert_array_equal(grad, 0.0)

  @parameterized.parameters(*MODES)
  def test_padding_values_are_ignored(self, mode):
    per_token = GOLDEN_PER_TOKEN.copy()
    per_token[GOLDEN_AGG_MASK == 0] = np.nan
    per_token[2, 0] = np.inf
    np.testing.assert_allclose(
        losses.aggregate_loss(per_token, GOLDEN_AGG_MASK, mode),
        GOLDEN_AGG[mode][0], **_TOL)

  @parameterized.parameters("token-mean", "seq-mean-token-sum",
                            "seq-mean-token-mean")
  def test_weights_are_normalised_away(self, mode):
    inputs = random_inputs(9)
    w = inputs["sample_weights"]
    a = losses.aggregate_loss(inputs["entropy"], inputs["token_mask"], mode,
                              sample_weights=w)
    b = losses.aggregate_loss(inputs["entropy"], inputs["token_mask"], mode,
                              sample_weights=7.0 * w)
    np.testing.assert_allclose(a, b, **_TOL)

  def test_unweighted_normaliser_keeps_weight_scale(self):
    # Weights (1, 2, 5) in the numerator only: token-mean 11 / 3.
    z = losses.global_normalizer(GOLDEN_AGG_MASK, "token-mean")
    np.testing.assert_allclose(
        losses.aggregate_loss(GOLDEN_PER_TOKEN, GOLDEN_AGG_MASK, "token-mean",
                              sample_weights=GOLDEN_WEIGHTS, normalizer=z),
        11 / 3, **_TOL)

  def test_global_normalizer_golden(self):
    # n = (2, 1, 0), v = (1, 1, 0), w = (1, 2, 5).
    expected = {"token-mean": (3, 4), "token-sum": (1, 1),
                "seq-mean-token-sum": (2, 3), "seq-mean-token-mean": (2, 3),
                "seq-mean-token-sum-norm": (2, 3)}
    for mode, (unweighted, weighted) in expected.items():
      np.testing.assert_allclose(
          losses.global_normalizer(GOLDEN_AGG_MASK, mode), unweighted)
      np.testing.assert_allclose(
          losses.global_normalizer(GOLDEN_AGG_MASK, mode, GOLDEN_WEIGHTS),
          weighted)

  def test_bad_inputs(self):
    per_token, mask = np.zeros((2, 3)), np.ones((2, 3))
    with self.assertRaisesRegex(ValueError, "'token-avg'"):
      losses.aggregate_loss(per_token, mask, "token-avg")
    with self.assertRaisesRegex(ValueError, "'seq-sum'"):
      losses.global_normalizer(mask, "seq-sum")
    with self.assertRaisesRegex(ValueError, "token_mask"):
      jax.jit(losses.aggregate_loss, static_argnums=2)(
          per_token, np.ones((3, 2)), "token-mean")
    with self.assertRaisesRegex(ValueError, "sample_weights"):
      losses.aggregate_loss(per_token, mask, sample_weights=np.ones(3))
    with self.assertRaisesRegex(ValueError, "normalizer"):
      losses.aggregate_loss(per_token, mask, normalizer=np.ones(2))
    with self.assertRaisesRegex(ValueError, "max_tokens"):
      losses.aggregate_loss(per_token, mask, "seq-mean-token-sum-norm",
                            max_tokens=0)
    with self.assertRaisesRegex(ValueError, "per_token"):
      losses.aggregate_loss(np.zeros(3), np.ones(3))


class PolicyLossTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(*zip(MODES, ("k3", "k1", "k2", "k3", "k1")))
  def test_matches_numpy_composition(self, mode, estimator):
    inputs = random_inputs(10)
    fn = self.variant(functools.partial(
        losses.policy_loss, mode=mode, kl_estimator=estimator, kl_coef=0.1,
        entropy_coef=0.01, eps_low=0.2, eps_high=0.28, dual_clip=3.0))
    loss, metrics = fn(**inputs)
    lp, ref = np.float64(inputs["log_probs"]), np.float64(
        inputs["ref_log_probs"])
    kl = {"k1": lp - ref, "k2": 0.5 * (lp - ref)**2,
          "k3": np.exp(ref - lp) - (ref - lp) - 1}[estimator]
    per_token = (np_surrogate(inputs["log_probs"], inputs["old_log_probs"],
                              inputs["advantages"], 0.2, 0.28, 3.0)
                 + 0.1 * kl - 0.01 * inputs["entropy"])
    expected = np_aggregate(per_token, inputs["token_mask"], mode,
                            inputs["sample_weights"])
    np.testing.assert_allclose(loss, expected, **_TOL)
    np.testing.assert_allclose(
        metrics["pg_loss"] + metrics["kl_loss"] + metrics["entropy_loss"],
        loss, **_TOL)
    np.testing.assert_allclose(metrics["loss"], loss, **_TOL)

  def test_golden_metrics(self):
    # GOLDEN batch, token-mean: per-token losses (-1.2, -0.8 | 1, 1.5, 0.8)
    # -> 1.3 / 5 = 0.26; clip fraction 2/5; ratio mean
    # (1.25 + 0.8 + 1 + 1.5 + 0.6) / 5 = 1.03.
    loss, metrics = losses.policy_loss(GOLDEN_LOG_PROBS, GOLDEN_OLD,
                                       GOLDEN_ADV, GOLDEN_MASK)
    np.testing.assert_allclose(loss, 0.26, **_TOL)
    np.testing.assert_allclose(metrics["clip_fraction"], 0.4, **_TOL)
    np.testing.assert_allclose(metrics["ratio_mean"], 1.03, **_TOL)
    np.testing.assert_allclose(metrics["num_tokens"], 5.0)
    np.testing.assert_allclose(metrics["normalizer"], 5.0)
    self.assertEqual(metrics["kl_loss"], 0.0)
    self.assertEqual(metrics["entropy"], 0.0)

  def test_single_token_routing_decision(self):
    # T = 1 (a routing decision): token-mean is the plain mean over rollouts
    # of -min(rho A, clip(rho) A). rho = (1, 1.1), A = (0.5, 2):
    # (-0.5 - 2.2) / 2 = -1.35.
    log_probs = np.log(np.array([[0.5], [0.55]], np.float32))
    old = np.log(np.array([[0.5], [0.5]], np.float32))
    loss, _ = losses.policy_loss(log_probs, old, np.array([0.5, 2.0]),
                                 np.ones((2, 1)))
    np.testing.assert_allclose(loss, -1.35, **_TOL)

  def test_nan_padding_gives_finite_loss_and_gradient(self):
    inputs = random_inputs(11)
    pad = inputs["token_mask"] == 0
    for key in ("log_probs", "old_log_probs", "ref_log_probs", "entropy"):
      inputs[key] = np.where(pad, np.nan, inputs[key]).astype(np.float32)
    inputs["old_log_probs"][pad] = -np.inf
    inputs["advantages"][3] = np.nan  # row 3 is all padding
    def loss_fn(log_probs):
      return losses.policy_loss(log_probs, **{
          k: v for k, v in inputs.items() if k != "log_probs"},
                                kl_coef=0.1, entropy_coef=0.01)
    (loss, metrics), grad = jax.value_and_grad(loss_fn, has_aux=True)(
        inputs["log_probs"])
    self.assertTrue(np.isfinite(loss))
    self.assertTrue(all(np.isfinite(v) for v in metrics.values()))
    self.assertTrue(np.isfinite(grad).all())
    np.testing.assert_array_equal(np.asarray(grad)[pad], 0.0)

  def test_metric_keys_are_fixed(self):
    inputs = random_inputs(12)
    _, bare = losses.policy_loss(inputs["log_probs"], inputs["old_log_probs"],
                                 inputs["advantages"], inputs["token_mask"])
    _, full = losses.policy_loss(**inputs, kl_coef=0.1, entropy_coef=0.1)
    self.assertEqual(set(bare), set(full))

  def test_bad_inputs(self):
    inputs = random_inputs(13)
    base = dict(log_probs=inputs["log_probs"],
                old_log_probs=inputs["old_log_probs"],
                advantages=inputs["advantages"],
                token_mask=inputs["token_mask"])
    with self.assertRaisesRegex(ValueError, "ref_log_probs"):
      losses.policy_loss(**base, kl_coef=0.1)
    with self.assertRaisesRegex(ValueError, "entropy"):
      losses.policy_loss(**base, entropy_coef=0.1)
    with self.assertRaisesRegex(ValueError, "'k9'"):
      losses.policy_loss(**base, kl_estimator="k9")
    with self.assertRaisesRegex(ValueError, "'mean'"):
      losses.policy_loss(**base, mode="mean")
    with self.assertRaisesRegex(ValueError, "token_mask"):
      jax.jit(losses.policy_loss)(**dict(base, token_mask=np.ones((8, 4))))
    with self.assertRaisesRegex(ValueError, "advantages"):
      jax.jit(losses.policy_loss)(**dict(base, advantages=np.ones(7)))


class ShardedTest(parameterized.TestCase):
  """The loss over 4 devices' shards with the global Z equals the full one."""

  @parameterized.parameters(*MODES)
  def test_pmap_shards_sum_to_full_batch(self, mode):
    num_devices = 4
    self.assertGreaterEqual(jax.local_device_count(), num_devices)
    inputs = random_inputs(14, num_rows=8, empty_rows=(2, 3))
    kwargs = dict(mode=mode, kl_coef=0.05, entropy_coef=0.01, dual_clip=3.0)

    def loss_fn(log_probs, rest, axis_name=None):
      return losses.policy_loss(log_probs, **rest, axis_name=axis_name,
                                **kwargs)

    rest = {k: v for k, v in inputs.items() if k != "log_probs"}
    (full_loss, full_metrics), full_grad = jax.value_and_grad(
        loss_fn, has_aux=True)(inputs["log_probs"], rest)

    shard = lambda x: x.reshape((num_devices, -1) + x.shape[1:])
    sharded_fn = jax.pmap(
        jax.value_and_grad(functools.partial(loss_fn, axis_name="devices"),
                           has_aux=True), axis_name="devices")
    (losses_per_device, metrics), grads = jax.block_until_ready(sharded_fn(
        shard(inputs["log_probs"]), jax.tree.map(shard, rest)))

    np.testing.assert_allclose(np.sum(losses_per_device), full_loss,
                               rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.reshape(grads, full_grad.shape), full_grad,
                               rtol=1e-5, atol=1e-7)
    for key in ("clip_fraction", "approx_kl", "ref_kl", "entropy",
                "num_tokens", "normalizer", "ratio_mean"):
      np.testing.assert_allclose(metrics[key], np.broadcast_to(
          full_metrics[key], (num_devices,)), rtol=1e-5, atol=1e-6,
                                 err_msg=key)


# Jitted once per (shape, mode); hypothesis draws shapes from a short list so
# the property test compiles a handful of times, not once per example.
_jit_policy_loss = jax.jit(losses.policy_loss, static_argnames=("mode",))
_jit_global_normalizer = jax.jit(losses.global_normalizer,
                                 static_argnames=("mode",))


class PropertyTest(absltest.TestCase):

  @hypothesis.settings(max_examples=30, deadline=None)
  @hypothesis.given(
      shape=st.sampled_from([(1, 1), (5, 4)]),
      seed=st.integers(0, 2**16), mode=st.sampled_from(MODES),
      mask_density=st.sampled_from([0.0, 0.3, 1.0]))
  def test_finite_and_all_masked_zero(self, shape, seed, mode, mask_density):
    rng = np.random.default_rng(seed)
    num_rows = shape[0]
    log_probs = np.log(rng.uniform(0.01, 1, shape)).astype(np.float32)
    old = np.log(rng.uniform(0.01, 1, shape)).astype(np.float32)
    adv = rng.normal(0, 3, num_rows).astype(np.float32)
    mask = (rng.uniform(size=shape) < mask_density).astype(np.float32)
    weights = rng.uniform(0, 2, num_rows).astype(np.float32)
    loss, metrics = _jit_policy_loss(log_probs, old, adv, mask,
                                     sample_weights=weights, mode=mode,
                                     dual_clip=3.0)
    self.assertTrue(np.isfinite(loss))
    self.assertTrue(all(np.isfinite(v) for v in metrics.values()))
    if not mask.any():
      self.assertEqual(float(loss), 0.0)
    # Splitting the rows into two micro-batches anywhere, each with the
    # global Z, changes nothing. A micro-batch is expressed by masking the
    # other rows out (they then contribute nothing), keeping shapes fixed.
    in_first = (np.arange(num_rows) < rng.integers(0, num_rows + 1))[:, None]
    z = _jit_global_normalizer(mask, mode, weights)
    parts = [
        _jit_policy_loss(log_probs, old, adv, mask * part,
                         sample_weights=weights, mode=mode, dual_clip=3.0,
                         normalizer=z)[0]
        for part in (in_first, ~in_first)]
    np.testing.assert_allclose(sum(parts), loss, rtol=1e-5, atol=1e-5)


if __name__ == "__main__":
  absltest.main()
