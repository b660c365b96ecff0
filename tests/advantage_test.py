"""Tests of recal_jax.advantage against numpy references, peers' numbers and properties."""

import functools

from absl.testing import absltest
from absl.testing import parameterized
import chex
import hypothesis
from hypothesis import strategies as st
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np

from recal_jax import advantage
from recal_jax import calibration


# ------------------------------------------------------ numpy references
def np_group_mean_std(x, ids, mask, ddof):
  """Per-row group mean and std with a Python loop over groups (the slow way)."""
  mean = np.zeros_like(x, dtype=np.float64)
  std = np.zeros_like(x, dtype=np.float64)
  count = np.zeros(x.shape[0])
  for g in np.unique(ids):
    rows = (ids == g) & (mask > 0)
    if not rows.any():
      continue
    vals = x[rows].astype(np.float64)
    mean[ids == g] = vals.mean(0)
    std[ids == g] = vals.std(0, ddof=ddof) if rows.sum() > ddof else 0.0
    count[ids == g] = rows.sum()
  return mean, std, count


def np_grpo(r, ids, mask, *, scaling="group", ddof=0, eps=1e-6, singleton="zero"):
  mean, std, count = np_group_mean_std(r, ids, mask, ddof)
  if scaling == "batch":
    std = np.full_like(std, r[mask > 0].std(ddof=ddof))
  elif scaling == "none":
    std = np.ones_like(std)
  adv = (r - mean) / (std + eps)
  if singleton == "raw":
    adv = np.where(count == 1, r / (1 + eps), adv)
  return np.where(mask > 0, adv, 0.0)


def np_rloo(r, ids, mask):
  adv = np.zeros_like(r, dtype=np.float64)
  for i in range(len(r)):
    if mask[i] <= 0:
      continue
    others = [r[j] for j in range(len(r)) if ids[j] == ids[i] and j != i and mask[j] > 0]
    adv[i] = r[i] - np.mean(others) if others else 0.0
  return adv


def np_gate(r, names, parents, thresholds, fail_values):
  """Gate of a tree given as dicts by name (parents: child -> parent)."""
  n, k = r.shape
  gate = np.ones((n, k))
  for c, name in enumerate(names):
    node = parents.get(name)
    while node is not None:
      if node in thresholds:
        gate[:, c] *= r[:, names.index(node)] >= thresholds[node]
      node = parents.get(node)
  fail = np.asarray([fail_values.get(name, 0.0) for name in names])
  return gate, gate * r + (1 - gate) * fail[None]


def np_componentwise(r, ids, mask, gate=None, ddof=0, eps=1e-6):
  out = np.zeros_like(r, dtype=np.float64)
  for c in range(r.shape[1]):
    member = mask * (1.0 if gate is None else gate[:, c])
    out[:, c] = np_grpo(r[:, c], ids, member, ddof=ddof, eps=eps)
  return out


def np_whiten(x, mask, ddof=0, eps=1e-6):
  v = x[mask > 0]
  if v.size <= ddof:
    return np.zeros_like(x)
  return np.where(mask > 0, (x - v.mean()) / (v.std(ddof=ddof) + eps), 0.0)


def np_dataset_norm(x, dids, mask, eps=1e-6, keep_zeros=False):
  mean, std, _ = np_group_mean_std(x, dids, mask, 0)
  keep = (mask > 0).reshape((-1,) + (1,) * (x.ndim - 1))
  if keep_zeros:
    keep = keep & (x != 0)
  return np.where(keep, (x - mean) / (std + eps), 0.0)


def np_recal(r, ids, dids, mask, cfg: advantage.ReCalConfig):
  """ReCal (batch dataset statistics) written out step by step in numpy."""
  r = np.where(mask[:, None] > 0, r, 0.0).astype(np.float64)
  raw = r.copy()
  names = list(cfg.components)
  for c in cfg.dataset_norm_components:
    r[:, names.index(c)] = np_dataset_norm(raw[:, names.index(c)], dids, mask, cfg.eps)
  gate = None
  if cfg.hierarchy is not None:
    h = cfg.hierarchy
    gate, r = np_gate(r, names, dict(h.parents), dict(h.thresholds), dict(h.fail_values))
  if cfg.reward == "components":
    per = np_componentwise(r, ids, mask, gate if cfg.conditional else None,
                           cfg.ddof, cfg.eps)
    adv = per @ np.asarray(cfg.weight_vector())
  else:
    adv = np_grpo(r @ np.asarray(cfg.weight_vector(sum_weights=True)), ids, mask,
                  ddof=cfg.ddof, eps=cfg.eps)
  adv = np.where(np.abs(adv) < 1e-12, 0.0, adv)  # float64 noise of a group without spread
  if cfg.whiten:
    adv = np.where(adv != 0, np_whiten(adv, mask, cfg.ddof, cfg.eps), 0.0)
  # variance weights (bernoulli h on the correctness column)
  vc = names.index(cfg.variance_component or "correctness")
  p, _, count = np_group_mean_std(raw[:, vc], ids, mask, 0)
  h = np.sqrt(np.clip(p, 0, 1) * (1 - np.clip(p, 0, 1)))
  groups = np.unique(ids[mask > 0])
  mean_h = np.mean([h[ids == g][0] for g in groups])
  omega = np.clip(h / mean_h, cfg.weight_min, cfg.weight_max) if mean_h > 0 else np.ones_like(h)
  weights = np.where(mask > 0, omega if cfg.variance_component else 1.0, 0.0)
  if cfg.dataset_norm == "batch":
    adv = np_dataset_norm(adv, dids, mask, cfg.eps, keep_zeros=True)
  return np.where(mask > 0, adv, 0.0), weights


def random_batch(seed, n=48, num_groups=9, num_datasets=3, k=3, pad=5):
  rng = np.random.default_rng(seed)
  ids = rng.integers(0, num_groups, n).astype(np.int32)
  dids = (ids % num_datasets).astype(np.int32)  # a query belongs to one dataset
  fmt = (rng.random(n) < 0.8).astype(np.float32)
  correct = (rng.random(n) < 0.5).astype(np.float32)
  cost = -rng.gamma(2.0, 0.3, n).astype(np.float32)
  r = np.stack([fmt, correct, cost], 1)[:, :k]
  mask = np.ones(n, np.float32)
  mask[rng.choice(n, pad, replace=False)] = 0.0
  return r, ids, dids, mask


# ------------------------------------------------------------------ tests
class GroupAdvantageTest(chex.TestCase, parameterized.TestCase):

  def setUp(self):
    super().setUp()
    self.r, self.ids, self.dids, self.mask = random_batch(0)
    self.scalar = self.r[:, 1] + 0.3 * self.r[:, 2]

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.product(scaling=("group", "batch", "none"), ddof=(0, 1))
  def test_grpo_matches_numpy(self, scaling, ddof):
    fn = self.variant(functools.partial(advantage.grpo_advantages, num_groups=9,
                                        std_scaling=scaling, ddof=ddof, eps=1e-4))
    got = fn(self.scalar, self.ids, mask=self.mask)
    want = np_grpo(self.scalar, self.ids, self.mask, scaling=scaling, ddof=ddof, eps=1e-4)
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-5)

  @chex.variants(with_jit=True, without_jit=True)
  def test_rloo_matches_numpy(self):
    fn = self.variant(functools.partial(advantage.rloo_advantages, num_groups=9))
    np.testing.assert_allclose(fn(self.scalar, self.ids, mask=self.mask),
                               np_rloo(self.scalar, self.ids, self.mask), atol=1e-5)

  @chex.variants(with_jit=True, without_jit=True)
  def test_componentwise_conditional_matches_numpy(self):
    gate, gated = np_gate(self.r, ["format", "correctness", "cost"],
                          {"correctness": "format", "cost": "correctness"},
                          {"format": 0.5, "correctness": 0.5}, {})
    fn = self.variant(functools.partial(advantage.componentwise_advantages,
                                        num_groups=9, conditional=True))
    got = fn(gated.astype(np.float32), self.ids, mask=self.mask, gate=gate.astype(np.float32))
    np.testing.assert_allclose(got, np_componentwise(gated, self.ids, self.mask, gate),
                               atol=2e-5)
    # A component whose gate failed gets exactly zero advantage.
    self.assertTrue(np.all(np.asarray(got)[gate == 0] == 0.0))

  @chex.variants(with_jit=True, without_jit=True)
  def test_hierarchical_gate_matches_numpy(self):
    h = advantage.Hierarchy(parents={"correctness": "format", "cost": "correctness"},
                            thresholds={"format": 0.5, "correctness": 0.5},
                            fail_values={"correctness": -1.0, "cost": -2.0})
    names = ("format", "correctness", "cost")
    gate, gated = self.variant(lambda r: advantage.hierarchical_gate(r, h, names))(self.r)
    want_gate, want_gated = np_gate(self.r, list(names), dict(h.parents),
                                    dict(h.thresholds), dict(h.fail_values))
    np.testing.assert_array_equal(gate, want_gate)
    np.testing.assert_allclose(gated, want_gated, atol=1e-6)

  def test_hierarchy_rejects_cycles_and_unknown_names(self):
    with self.assertRaisesRegex(ValueError, "cycle"):
      advantage.Hierarchy(parents={"a": "b", "b": "c", "c": "a"})
    with self.assertRaisesRegex(ValueError, r"ReCalConfig.hierarchy names \['x'\]"):
      advantage.ReCalConfig(components=("a", "b"),
                            hierarchy=advantage.Hierarchy(parents={"b": "x"}))
    with self.assertRaisesRegex(ValueError, "Hierarchy.thresholds"):
      advantage.Hierarchy(thresholds={"a": "high"})


class PeerGoldenTest(parameterized.TestCase):
  """The same inputs give the peers' numbers under the peers' conventions (PEERS.md)."""

  def test_trl_grpo(self):
    # TRL: A = (r - mean) / (std_ddof1 + 1e-4). r = [1, 0, .5, 1]: mean .625,
    # std = sqrt((.375^2 + .625^2 + .125^2 + .375^2) / 3) = .47871355.
    got = advantage.grpo_advantages(jnp.array([1.0, 0.0, 0.5, 1.0]),
                                    jnp.zeros(4, jnp.int32), 1, ddof=1, eps=1e-4)
    np.testing.assert_allclose(got, [0.78318585, -1.30530975, -0.26106195, 0.78318585],
                               rtol=1e-5)

  def test_verl_grpo_with_singleton(self):
    # verl loop: eps 1e-6, ddof 1; a one-member group has mean 0 / std 1, so
    # A = r / (1 + 1e-6). Group 1 = [.2, .9]: std = .4949747, A = -/+ .70710535.
    r = jnp.array([1.0, 0.0, 0.5, 1.0, 0.2, 0.9, 0.7])
    ids = jnp.array([0, 0, 0, 0, 1, 1, 2])
    got = advantage.grpo_advantages(r, ids, 3, ddof=1, eps=1e-6, singleton="raw")
    np.testing.assert_allclose(
        got, [0.78334782, -1.30557969, -0.26111594, 0.78334782, -0.70710535,
              0.70710535, 0.6999993], rtol=1e-5)

  def test_trl_grpo_zero_spread_and_singleton_give_zero(self):
    r = jnp.array([0.3, 0.3, 0.3, 0.8])
    got = advantage.grpo_advantages(r, jnp.array([0, 0, 0, 1]), 2, ddof=1, eps=1e-4)
    np.testing.assert_array_equal(got, np.zeros(4))

  def test_rloo_peers(self):
    # RLOO: A_i = r_i - mean of the others. [1, 0, .5, 1] -> [.5, -.8333, -.1667, .5];
    # a lone member: 0 (TRL, verl vectorised) or its raw score (verl loop).
    r = jnp.array([1.0, 0.0, 0.5, 1.0, 0.7])
    ids = jnp.array([0, 0, 0, 0, 1])
    np.testing.assert_allclose(advantage.rloo_advantages(r, ids, 2),
                               [0.5, -0.83333333, -0.16666667, 0.5, 0.0], rtol=1e-5)
    np.testing.assert_allclose(advantage.rloo_advantages(r, ids, 2, singleton="raw")[-1],
                               0.7, rtol=1e-6)

  def test_nvlabs_gdpo(self):
    # GDPO: per-component group normalisation (ddof 1, +1e-4), sum, batch
    # normalisation (+1e-4). Two groups of two, two components.
    r = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, 0.0]], np.float32)
    ids = np.array([0, 0, 1, 1])
    got = advantage.gdpo_advantages(r, ids, 2, ddof=1, eps=1e-4, whiten_eps=1e-4)
    per = np_componentwise(r, ids, np.ones(4), ddof=1, eps=1e-4)
    s = per.sum(1)
    want = (s - s.mean()) / (s.std(ddof=1) + 1e-4)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # Hand value: group 0 columns are +-.7071/(.7071+1e-4) each, so the sums
    # are 0, 0; group 1 col 0 has no spread, col 1 gives +-.99986 -> sums
    # [0, 0, .99986, -.99986], std_ddof1 = .81638, first entry 0.
    self.assertAlmostEqual(float(got[0]), 0.0, places=5)


class ReCalTest(chex.TestCase, parameterized.TestCase):

  def setUp(self):
    super().setUp()
    self.r, self.ids, self.dids, self.mask = random_batch(1, n=60, num_groups=12)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters("recal", "recal_no_hierarchy", "recal_no_variance_weights",
                            "recal_no_dataset_norm", "grpo", "gdpo")
  def test_matches_numpy_reference(self, method):
    cfg = advantage.method_config(method)
    fn = self.variant(functools.partial(advantage.recal_advantages, num_groups=12,
                                        num_datasets=3, config=cfg))
    out = fn(self.r, self.ids, dataset_ids=self.dids, mask=self.mask)
    adv, weights = np_recal(self.r, self.ids, self.dids, self.mask, cfg)
    np.testing.assert_allclose(out.advantages, adv, atol=5e-5, rtol=1e-4)
    np.testing.assert_allclose(out.weights, weights, atol=1e-5, rtol=1e-5)

  def test_all_switches_off_is_grpo_on_summed_reward(self):
    cfg = advantage.method_config("recal", reward="sum", hierarchy=None,
                                  variance_component=None, dataset_norm="none",
                                  dataset_norm_components=())
    out = advantage.recal_advantages(self.r, self.ids, 12, self.dids, 3, self.mask, config=cfg)
    summed = self.r @ np.asarray(cfg.weight_vector(), np.float32)
    want = advantage.grpo_advantages(summed, self.ids, 12, self.mask)
    np.testing.assert_allclose(out.advantages, want, atol=1e-6)
    np.testing.assert_array_equal(out.weights, self.mask)
    self.assertEqual(advantage.method_config("grpo"), cfg)

  def test_gating_off_is_gdpo(self):
    cfg = advantage.method_config("gdpo")
    out = advantage.recal_advantages(self.r, self.ids, 12, self.dids, 3, self.mask, config=cfg)
    want = advantage.gdpo_advantages(self.r, self.ids, 12, self.mask,
                                     component_weights=cfg.weight_vector(),
                                     eps=cfg.eps, ddof=cfg.ddof)
    np.testing.assert_allclose(out.advantages, want, atol=1e-6)

  def test_rloo_and_router_r1_methods(self):
    for method, scalar_fn in (
        ("rloo", lambda r: r @ np.array([1.0, 1.0, 0.5], np.float32)),
        ("router_r1", lambda r: np.where(r[:, 0] < 0.5, -1.0,
                                         r[:, 1] + 0.5 * r[:, 2] * (r[:, 1] >= 0.5))),
    ):
      out = advantage.recal_advantages(self.r, self.ids, 12, self.dids, 3, self.mask,
                                       config=advantage.method_config(method))
      scalar = scalar_fn(self.r).astype(np.float32)
      want = (np_rloo(scalar, self.ids, self.mask) if method == "rloo"
              else np_grpo(scalar, self.ids, self.mask))
      np.testing.assert_allclose(out.advantages, want, atol=2e-5, err_msg=method)

  def test_variance_weights_favour_uncertain_groups(self):
    # group 0: all correct (no spread), group 1: half right (most uncertain).
    r = np.array([[1, 1, -.1], [1, 1, -.2], [1, 1, -.3], [1, 1, -.1],
                  [1, 0, -.1], [1, 1, -.2], [1, 0, -.3], [1, 1, -.1]], np.float32)
    ids = np.repeat([0, 1], 4)
    out = advantage.recal_advantages(r, ids, 2, config=advantage.method_config("recal"))
    w = np.asarray(out.weights)
    self.assertAlmostEqual(w[0], 0.1, places=6)  # clipped to weight_min
    self.assertAlmostEqual(w[4], 2.0, places=5)  # h / mean(h) = .5 / .25
    self.assertAlmostEqual(float(out.diagnostics["zero_spread_groups"]), 0.5)

  def test_running_dataset_norm_threads_state(self):
    cfg = advantage.method_config("recal", dataset_norm="running", running_decay=0.9)
    state = calibration.init_dataset_stats(3)
    step = jax.jit(functools.partial(advantage.recal_advantages, num_groups=12,
                                     num_datasets=3, config=cfg))
    for _ in range(3):
      out = step(self.r, self.ids, dataset_ids=self.dids, mask=self.mask,
                 dataset_state=state)
      state = out.dataset_state
    np.testing.assert_array_equal(state.count, [3, 3, 3])
    self.assertTrue(np.isfinite(out.advantages).all())
    with self.assertRaisesRegex(ValueError, "dataset_state"):
      advantage.recal_advantages(self.r, self.ids, 12, self.dids, 3, config=cfg)

  def test_diagnostics(self):
    out = advantage.recal_advantages(self.r, self.ids, 12, self.dids, 3, self.mask,
                                     config=advantage.method_config("recal"))
    d = out.diagnostics
    valid = self.mask > 0
    np.testing.assert_allclose(d["component_mean"], self.r[valid].mean(0), atol=1e-5)
    np.testing.assert_allclose(d["gate_pass_rate"],
                               [1.0, self.r[valid, 0].mean(),
                                (self.r[valid, :2] >= .5).all(1).mean()], atol=1e-6)
    np.testing.assert_array_equal(d["dataset_count"],
                                  np.bincount(self.dids[valid], minlength=3))
    self.assertEqual(float(d["invalid_rows"]), 0.0)


  @parameterized.parameters("zero", "raw")
  def test_component_adv_std_is_the_rms_of_each_column(self, singleton):
    """Computed from the group moments (no row pass): equals the mask-weighted
    root mean square of `componentwise_advantages`' columns."""
    r, ids, _, mask = random_batch(3, n=60, num_groups=25)  # some singletons
    mask = mask * np.random.default_rng(4).uniform(0.2, 1.0, 60).astype(np.float32)
    cfg = advantage.ReCalConfig(components=("format", "correctness", "cost"),
                                singleton=singleton)
    for layout, rows in ((None, np.argsort(ids, kind="stable")), (None, np.arange(60))):
      out = advantage.recal_advantages(r[rows], ids[rows], 25, mask=mask[rows], config=cfg,
                                       group_size=layout)
      per = np.asarray(advantage.componentwise_advantages(
          r[rows], ids[rows], 25, mask[rows], singleton=singleton), np.float64)
      m = mask[rows].astype(np.float64)
      want = np.sqrt((m[:, None] * per ** 2).sum(0) / m.sum())
      np.testing.assert_allclose(out.diagnostics["component_adv_std"], want, rtol=1e-5)
      self.assertTrue((want > 0.1).all())

class EdgeCaseTest(parameterized.TestCase):

  @parameterized.parameters(*advantage.METHODS)
  def test_padding_singletons_all_equal_and_empty_datasets_are_finite(self, method):
    r = np.array([[1, 1, -.1], [1, 1, -.1], [0, 0, 0.], [1, .5, -.2], [9, 9, 9]], np.float32)
    ids = np.array([0, 0, 1, 2, 3])  # groups 0 all-equal, 1 and 2 singletons
    dids = np.array([0, 0, 1, 1, 0])  # dataset 2 is empty
    mask = np.array([1, 1, 1, 1, 0], np.float32)  # last row is padding
    cfg = advantage.method_config(method)
    state = calibration.init_dataset_stats(3)
    out = advantage.recal_advantages(r, ids, 5, dids, 3, mask, config=cfg,
                                     dataset_state=state)
    self.assertTrue(np.isfinite(out.advantages).all())
    self.assertTrue(np.isfinite(out.weights).all())
    np.testing.assert_array_equal(out.advantages, 0.0)
    self.assertEqual(float(out.weights[-1]), 0.0)
    for v in jax.tree_util.tree_leaves(out.diagnostics):
      self.assertTrue(np.isfinite(v).all())

  def test_all_masked_batch(self):
    r = np.ones((4, 3), np.float32)
    out = advantage.recal_advantages(r, np.zeros(4, np.int32), 1, mask=np.zeros(4),
                                     config=advantage.method_config("recal"))
    np.testing.assert_array_equal(out.advantages, 0.0)
    np.testing.assert_array_equal(out.weights, 0.0)

  def test_non_finite_rewards_are_dropped_and_counted_in_jit(self):
    r, ids, dids, mask = random_batch(2)
    r[3, 1] = np.nan
    r[7, 2] = np.inf
    out = jax.jit(functools.partial(advantage.recal_advantages, num_groups=9,
                                    num_datasets=3, config=advantage.method_config("recal"))
                  )(r, ids, dataset_ids=dids, mask=mask)
    self.assertTrue(np.isfinite(out.advantages).all())
    self.assertEqual(float(out.advantages[3]), 0.0)
    expected_invalid = mask[3] + mask[7]
    self.assertEqual(float(out.diagnostics["invalid_rows"]), expected_invalid)
    for fn in (advantage.grpo_advantages, advantage.rloo_advantages):
      self.assertTrue(np.isfinite(fn(r[:, 1], ids, 9, mask)).all())

  def test_host_check_names_the_problem(self):
    r, ids, dids, mask = random_batch(3)
    mask[:] = 1
    r[5, 0] = np.nan
    with self.assertRaisesRegex(ValueError, "row 5 is not finite"):
      advantage.check_inputs(r, ids, 9, dids, 3, mask)
    r[5, 0] = 1.0
    ids[4] = 9
    with self.assertRaisesRegex(ValueError, r"group_ids\[4\] = 9 is outside \[0, 9\)"):
      advantage.check_inputs(r, ids, 9, dids, 3, mask)

  def test_shape_errors_at_trace_time(self):
    r = jnp.zeros((6, 3))
    cfg = advantage.method_config("recal")
    with self.assertRaisesRegex(ValueError, "group_ids must have shape"):
      jax.jit(lambda r, g: advantage.recal_advantages(r, g, 2, config=cfg))(
          r, jnp.zeros(5, jnp.int32))
    with self.assertRaisesRegex(ValueError, "components must have shape"):
      advantage.recal_advantages(jnp.zeros(6), jnp.zeros(6, jnp.int32), 2, config=cfg)
    with self.assertRaisesRegex(ValueError, "mask must have shape"):
      advantage.grpo_advantages(jnp.zeros(6), jnp.zeros(6, jnp.int32), 2, jnp.ones(5))
    with self.assertRaisesRegex(ValueError, "must be integers"):
      advantage.grpo_advantages(jnp.zeros(6), jnp.zeros(6), 2)
    with self.assertRaisesRegex(ValueError, "K=2 columns but ReCalConfig.components"):
      advantage.recal_advantages(jnp.zeros((6, 2)), jnp.zeros(6, jnp.int32), 2, config=cfg)
    with self.assertRaisesRegex(ValueError, "unknown method"):
      advantage.method_config("ppo")
    with self.assertRaisesRegex(ValueError, "std_scaling"):
      advantage.grpo_advantages(jnp.zeros(6), jnp.zeros(6, jnp.int32), 2, std_scaling="x")

  def test_no_retrace_for_new_values(self):
    @jax.jit
    @chex.assert_max_traces(n=1)
    def fn(r, ids, dids, mask):
      return advantage.recal_advantages(r, ids, 9, dids, 3, mask,
                                        config=advantage.method_config("recal"))

    for seed in range(3):
      fn(*random_batch(seed))


class VmapAndShardingTest(parameterized.TestCase):

  def test_vmap_over_independent_batches(self):
    batches = [random_batch(s) for s in range(3)]
    stack = lambda i: np.stack([b[i] for b in batches])
    fn = jax.jit(functools.partial(advantage.recal_advantages, num_groups=9, num_datasets=3,
                                   config=advantage.method_config("recal")))
    got = jax.vmap(lambda r, g, d, m: fn(r, g, dataset_ids=d, mask=m).advantages)(
        stack(0), stack(1), stack(2), stack(3))
    for i, (r, ids, dids, mask) in enumerate(batches):
      np.testing.assert_allclose(got[i], fn(r, ids, dataset_ids=dids, mask=mask).advantages,
                                 atol=1e-6)

  @parameterized.parameters("recal", "gdpo", "rloo", "grpo")
  def test_shard_map_axis_name_equals_single_device(self, method):
    # Groups deliberately straddle devices: the statistics are psum-ed.
    r, ids, dids, mask = random_batch(4, n=64, num_groups=10)
    cfg = advantage.method_config(method)
    mesh = Mesh(np.array(jax.devices()[:4]), ("data",))
    sharded = jax.jit(jax.shard_map(
        lambda r, g, d, m: advantage.recal_advantages(
            r, g, 10, d, 3, m, config=cfg, axis_name="data").advantages,
        mesh=mesh, in_specs=(P("data"),) * 4, out_specs=P("data")))
    got = jax.block_until_ready(sharded(r, ids, dids, mask))
    want = advantage.recal_advantages(r, ids, 10, dids, 3, mask, config=cfg).advantages
    np.testing.assert_allclose(got, want, atol=1e-6)

  def test_gspmd_sharded_inputs_equal_single_device(self):
    r, ids, dids, mask = random_batch(5, n=64, num_groups=10)
    mesh = Mesh(np.array(jax.devices()[:4]), ("data",))
    shard = lambda x: jax.device_put(x, NamedSharding(mesh, P("data")))
    fn = jax.jit(functools.partial(advantage.recal_advantages, num_groups=10, num_datasets=3,
                                   config=advantage.method_config("recal")))
    got = jax.block_until_ready(fn(shard(r), shard(ids), dataset_ids=shard(dids),
                                   mask=shard(mask)).advantages)
    want = fn(r, ids, dataset_ids=dids, mask=mask).advantages
    np.testing.assert_allclose(got, want, atol=1e-6)


_PROP_N, _PROP_GROUPS = 40, 8  # fixed shapes: one compile per method, random layouts


@functools.lru_cache(maxsize=None)
def _jitted_recal(method, sharded=False):
  cfg = advantage.method_config(method)
  if not sharded:
    return jax.jit(lambda r, i, d, m: advantage.recal_advantages(
        r, i, _PROP_GROUPS, d, 3, m, config=cfg))
  mesh = Mesh(np.array(jax.devices()[:4]), ("data",))
  return jax.jit(jax.shard_map(
      lambda r, i, d, m: advantage.recal_advantages(
          r, i, _PROP_GROUPS, d, 3, m, config=cfg, axis_name="data").advantages,
      mesh=mesh, in_specs=(P("data"),) * 4, out_specs=P("data")))


@st.composite
def ragged_batches(draw):
  """A fixed-shape batch whose first n rows are real, in groups of any size."""
  n = draw(st.integers(2, _PROP_N - 10))
  num_groups = draw(st.integers(1, _PROP_GROUPS))
  rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
  ids = rng.integers(0, num_groups, _PROP_N).astype(np.int32)
  dids = (ids % 3).astype(np.int32)
  r = np.stack([(rng.random(_PROP_N) < .8), (rng.random(_PROP_N) < .5),
                -rng.gamma(2.0, .3, _PROP_N)], 1).astype(np.float32)
  mask = (rng.random(_PROP_N) < 0.85).astype(np.float32)
  mask[n:] = 0.0
  return r, ids, dids, mask, n


class PropertyTest(parameterized.TestCase):

  @hypothesis.settings(max_examples=30, deadline=None)
  @hypothesis.given(ragged_batches(), st.sampled_from(sorted(advantage.METHODS)))
  def test_permuting_rows_permutes_outputs(self, batch, method):
    r, ids, dids, mask, _ = batch
    perm = np.random.default_rng(0).permutation(len(ids))
    fn = _jitted_recal(method)
    a, b = fn(r, ids, dids, mask), fn(r[perm], ids[perm], dids[perm], mask[perm])
    np.testing.assert_allclose(np.asarray(a.advantages)[perm], b.advantages, atol=1e-5)
    np.testing.assert_allclose(np.asarray(a.weights)[perm], b.weights, atol=1e-6)

  @hypothesis.settings(max_examples=30, deadline=None)
  @hypothesis.given(ragged_batches(), st.sampled_from(sorted(advantage.METHODS)))
  def test_padding_rows_change_nothing(self, batch, method):
    r, ids, dids, mask, n = batch
    fn = _jitted_recal(method)
    clean = fn(r, ids, dids, mask)
    # Overwrite the padding rows (n:) with garbage, NaN included, and new ids.
    rng = np.random.default_rng(n)
    r2, ids2 = r.copy(), ids.copy()
    r2[n:] = rng.normal(size=r2[n:].shape) * 100
    r2[n, 0] = np.nan
    ids2[n:] = rng.integers(0, _PROP_GROUPS, len(ids) - n)
    dirty = fn(r2, ids2, dids, mask)
    np.testing.assert_allclose(dirty.advantages, clean.advantages, atol=1e-5)
    np.testing.assert_array_equal(dirty.advantages[n:], 0.0)
    np.testing.assert_array_equal(dirty.weights[n:], 0.0)

  @hypothesis.settings(max_examples=15, deadline=None)
  @hypothesis.given(ragged_batches(), st.sampled_from(["recal", "gdpo", "rloo"]))
  def test_four_device_shard_equals_single_device(self, batch, method):
    r, ids, dids, mask, _ = batch
    got = jax.block_until_ready(_jitted_recal(method, sharded=True)(r, ids, dids, mask))
    want = _jitted_recal(method)(r, ids, dids, mask).advantages
    np.testing.assert_allclose(got, want, atol=1e-6)


# ------------------------------------------- contiguous-layout fast path
def contiguous_batch(seed, num_groups=6, group_size=4, num_datasets=3, pad=3,
                     cost_offset=0.0):
  """A `repeat(arange(B), G)` batch, one dataset per group, a few padding rows."""
  rng = np.random.default_rng(seed)
  n = num_groups * group_size
  ids = np.repeat(np.arange(num_groups), group_size).astype(np.int32)
  dids = np.repeat(rng.integers(0, num_datasets, num_groups), group_size).astype(np.int32)
  r = np.stack([(rng.random(n) < .8), (rng.random(n) < .5),
                cost_offset - rng.gamma(2.0, .3, n)], 1).astype(np.float32)
  mask = np.ones(n, np.float32)
  mask[rng.choice(n, pad, replace=False)] = 0.0
  return r, ids, dids, mask


@functools.lru_cache(maxsize=None)
def _jitted_layout(method, num_groups, group_size):
  cfg = advantage.method_config(method)
  return jax.jit(lambda r, i, d, m: advantage.recal_advantages(
      r, i, num_groups, d, 3, m, config=cfg, group_size=group_size))


class ContiguousLayoutTest(parameterized.TestCase):
  """`group_size`: the fast path gives the general path's values, any layout."""

  def assert_same(self, a, b, atol=2e-5):
    np.testing.assert_allclose(a.advantages, b.advantages, atol=atol, rtol=1e-5)
    np.testing.assert_allclose(a.weights, b.weights, atol=1e-6, rtol=1e-6)
    for key in b.diagnostics:
      np.testing.assert_allclose(a.diagnostics[key], b.diagnostics[key],
                                 atol=atol, rtol=1e-5, err_msg=key)

  def test_host_layout_check_names_the_first_bad_row(self):
    r, ids, dids, mask = contiguous_batch(0)
    advantage.check_inputs(r, ids, 6, dids, 3, mask, group_size=4)
    advantage.check_inputs(r, ids + 2, 8, dids, 3, mask, group_size=4)
    with self.assertRaisesRegex(ValueError, r"group_ids\[2\] = 0, the contiguous layout needs 1"):
      advantage.check_inputs(r, ids, 6, dids, 3, mask, group_size=2)
    mixed = dids.copy()
    mixed[1] = (mixed[1] + 1) % 3  # a group spanning two datasets
    with self.assertRaisesRegex(ValueError, r"dataset_ids\[1\]"):
      advantage.check_inputs(r, ids, 6, mixed, 3, mask, group_size=4)
    with self.assertRaisesRegex(ValueError, "does not divide"):
      advantage.check_inputs(r, ids, 6, dids, 3, mask, group_size=5)

  @parameterized.parameters(*sorted(advantage.METHODS))
  def test_fast_path_equals_general_path(self, method):
    r, ids, dids, mask = contiguous_batch(1)
    r[np.flatnonzero(mask == 0)[0], 1] = np.nan  # garbage in a padding row
    fast = _jitted_layout(method, 6, 4)(r, ids, dids, mask)
    general = _jitted_layout(method, 6, None)(r, ids, dids, mask)
    self.assert_same(fast, general)

  def test_fast_path_matches_numpy_with_large_offsets(self):
    r, ids, dids, mask = contiguous_batch(2, num_groups=8, group_size=8,
                                          cost_offset=1e3)
    cfg = advantage.method_config("recal")
    out = _jitted_layout("recal", 8, 8)(r, ids, dids, mask)
    adv, weights = np_recal(r, ids, dids, mask, cfg)
    np.testing.assert_allclose(out.advantages, adv, atol=5e-5, rtol=1e-4)
    np.testing.assert_allclose(out.weights, weights, atol=1e-5, rtol=1e-5)

  def test_one_compiled_path(self):
    # The layout is static: no run-time check, no `cond` between two programs,
    # and the contiguous path has no scatter over the N rows.
    r, ids, dids, mask = contiguous_batch(3)
    cfg = advantage.method_config("recal")
    for group_size in (4, None):
      jaxpr = str(jax.make_jaxpr(lambda r, i, d, m: advantage.recal_advantages(
          r, i, 6, d, 3, m, config=cfg, group_size=group_size))(r, ids, dids, mask))
      self.assertNotIn("cond[", jaxpr)
      n_rows_scatter = [line for line in jaxpr.splitlines()
                        if "scatter-add" in line and f"f32[{len(ids)}" in line]
      if group_size:
        self.assertEqual(n_rows_scatter, [])

  def test_fewer_groups_than_num_groups(self):
    # 6 groups of 4 in a batch declared with num_groups=10: blocks are placed.
    r, ids, dids, mask = contiguous_batch(4)
    fast = _jitted_layout("recal", 10, 4)(r, ids, dids, mask)
    general = _jitted_layout("recal", 10, None)(r, ids, dids, mask)
    self.assert_same(fast, general)
    shifted = ids + 3  # groups 3..8 of 10
    self.assert_same(_jitted_layout("recal", 10, 4)(r, shifted, dids, mask),
                     _jitted_layout("recal", 10, None)(r, shifted, dids, mask))

  def test_grpo_fast_path(self):
    r, ids, _, mask = contiguous_batch(5)
    scalar = r[:, 1] + 0.5 * r[:, 2]
    for scaling in advantage.STD_SCALINGS:
      fast = advantage.grpo_advantages(scalar, ids, 6, mask, std_scaling=scaling, group_size=4)
      general = advantage.grpo_advantages(scalar, ids, 6, mask, std_scaling=scaling,
                                          group_size=None)
      np.testing.assert_allclose(fast, general, atol=1e-5, err_msg=scaling)
      np.testing.assert_allclose(fast, np_grpo(scalar, ids, mask, scaling=scaling),
                                 atol=2e-5, err_msg=scaling)

  def test_bad_group_size(self):
    r, ids, dids, mask = contiguous_batch(6)
    cfg = advantage.method_config("recal")
    with self.assertRaisesRegex(ValueError, "does not divide"):
      advantage.recal_advantages(r, ids, 6, dids, 3, mask, config=cfg, group_size=5)
    for bad in ("auto", "fixed", 2.0):
      with self.assertRaisesRegex(ValueError, "group_size"):
        advantage.recal_advantages(r, ids, 6, dids, 3, mask, config=cfg, group_size=bad)
    with self.assertRaisesRegex(ValueError, "group_size"):
      advantage.grpo_advantages(r[:, 1], ids, 6, mask, group_size=0)

  def test_vmap_fast_path(self):
    batches = [contiguous_batch(s) for s in range(3)]
    stack = lambda i: np.stack([b[i] for b in batches])
    fn = _jitted_layout("recal", 6, 4)
    got = jax.vmap(lambda r, g, d, m: fn(r, g, d, m).advantages)(
        stack(0), stack(1), stack(2), stack(3))
    for i, b in enumerate(batches):
      np.testing.assert_allclose(got[i], _jitted_layout("recal", 6, None)(*b).advantages,
                                 atol=2e-5)

  @parameterized.parameters("recal", "gdpo", "grpo")
  def test_shard_map_with_group_size(self, method):
    # 8 groups of 4 over 4 devices: 2 whole groups per device.
    r, ids, dids, mask = contiguous_batch(7, num_groups=8)
    cfg = advantage.method_config(method)
    mesh = Mesh(np.array(jax.devices()[:4]), ("data",))
    sharded = jax.jit(jax.shard_map(
        lambda r, g, d, m: advantage.recal_advantages(
            r, g, 8, d, 3, m, config=cfg, axis_name="data", group_size=4).advantages,
        mesh=mesh, in_specs=(P("data"),) * 4, out_specs=P("data")))
    got = jax.block_until_ready(sharded(r, ids, dids, mask))
    want = _jitted_layout(method, 8, None)(r, ids, dids, mask).advantages
    np.testing.assert_allclose(got, want, atol=2e-5)


if __name__ == "__main__":
  absltest.main()
