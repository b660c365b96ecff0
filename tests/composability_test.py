"""The core composes: stage functions, named components, one compile per call."""

import ast
import pathlib

from absl.testing import absltest
import jax
from jax._src import dispatch
import numpy as np

from recal_jax import advantage
from recal_jax import calibration
from recal_jax import losses
from recal_jax import segments


_PERSISTENT_CACHE_HIT = "/jax/compilation_cache/cache_retrieval_time_sec"


class CompileCounter:
  """Counts XLA backend compilations while active, and compiles served by the
  persistent compilation cache (tests/conftest.py turns it on)."""

  def __enter__(self):
    self.count = 0
    jax.monitoring.register_event_duration_secs_listener(self._on_event)
    return self

  def _on_event(self, event, duration, **kwargs):
    del duration, kwargs
    if event in (dispatch.BACKEND_COMPILE_EVENT, _PERSISTENT_CACHE_HIT):
      self.count += 1

  def __exit__(self, *exc):
    jax.monitoring.unregister_event_duration_listener(self._on_event)


def ragged_batch(seed, n=48, num_groups=9, num_datasets=3):
  rng = np.random.default_rng(seed)
  ids = rng.integers(0, num_groups, n).astype(np.int32)
  r = np.stack([(rng.random(n) < .8), (rng.random(n) < .5),
                -rng.gamma(2.0, .3, n)], 1).astype(np.float32)
  return r, ids, (ids % num_datasets).astype(np.int32), np.ones(n, np.float32)


class EagerCallsCompileOnceTest(absltest.TestCase):
  """Item 6: a second eager call with the same shapes and config compiles nothing."""

  def test_public_functions(self):
    cfg = advantage.method_config("recal")
    running = advantage.method_config("recal", dataset_norm="running")
    state = calibration.init_dataset_stats(3)
    tokens = np.zeros((48, 2), np.float32)
    calls = {
        "recal": lambda r, g, d, m: advantage.recal_advantages(r, g, 9, d, 3, m, config=cfg),
        "recal_contiguous": lambda r, g, d, m: advantage.recal_advantages(
            r, np.repeat(np.arange(12), 4), 12, np.repeat(np.arange(12) % 3, 4), 3, m,
            config=running, dataset_state=state, group_size=4),
        "grpo": lambda r, g, d, m: advantage.grpo_advantages(r[:, 1], g, 9, m),
        "rloo": lambda r, g, d, m: advantage.rloo_advantages(r[:, 1], g, 9, m),
        "gdpo": lambda r, g, d, m: advantage.gdpo_advantages(r, g, 9, m),
        "whiten": lambda r, g, d, m: advantage.whiten(r[:, 2], m),
        "group_stats": lambda r, g, d, m: advantage.group_stats(r, g, 9, m),
        "componentwise": lambda r, g, d, m: advantage.componentwise_advantages(r, g, 9, m),
        "gate": lambda r, g, d, m: advantage.hierarchical_gate(
            r, advantage.ROUTING_TREE, advantage.ROUTING_COMPONENTS),
        "variance_weights": lambda r, g, d, m: calibration.variance_weights(r[:, 1], g, 9, m),
        "dataset_normalize": lambda r, g, d, m: calibration.dataset_normalize(r, d, 3, m),
        "balance": lambda r, g, d, m: calibration.dataset_balance_weights(d, 3, m),
        "running": lambda r, g, d, m: calibration.normalize_with_stats(
            calibration.update_dataset_stats(state, r[:, 2], d, m), r[:, 2], d, m),
        "segment_stats": lambda r, g, d, m: segments.segment_stats(r, g, 9, m),
        "policy_loss": lambda r, g, d, m: losses.policy_loss(
            tokens + r[:, :1], tokens, r[:, 2], tokens > -1, sample_weights=m),
    }
    for name, call in calls.items():
      jax.block_until_ready(call(*ragged_batch(0)))
      with CompileCounter() as counter:
        jax.block_until_ready(call(*ragged_batch(1)))
      self.assertEqual(counter.count, 0, msg=name)


  def test_readme_snippet_runs_eagerly_without_recompiling(self):
    readme = (pathlib.Path(advantage.__file__).parents[1] / "README.md").read_text()
    start = readme.index("## The maths in your own loop")
    code = readme[readme.index("```python\n", start) + 10:]
    code = code[:code.index("```")]
    exec(code, {})  # pylint: disable=exec-used
    with CompileCounter() as counter:
      exec(code, {})  # pylint: disable=exec-used
    self.assertEqual(counter.count, 0)


class NamedComponentsTest(absltest.TestCase):
  """Item 7: components are named; any K >= 1 with a consistent tree works."""

  def test_two_components_two_node_tree(self):
    r, ids, dids, mask = ragged_batch(2)
    cfg = advantage.ReCalConfig(
        components=("valid", "score"),
        hierarchy=advantage.Hierarchy(parents={"score": "valid"}, thresholds={"valid": .5}),
        variance_component="score", dataset_norm_components=("score",))
    out = advantage.recal_advantages(r[:, :2], ids, 9, dids, 3, mask, config=cfg)
    self.assertEqual(out.advantages.shape, (48,))
    self.assertTrue(np.isfinite(out.advantages).all())

  def test_one_component(self):
    r, ids, dids, mask = ragged_batch(3)
    out = advantage.recal_advantages(r[:, 1:2], ids, 9, dids, 3, mask,
                                     config=advantage.ReCalConfig(dataset_norm="none"))
    np.testing.assert_allclose(out.advantages, advantage.grpo_advantages(r[:, 1], ids, 9, mask),
                               atol=1e-6)

  def test_default_config_touches_no_column_by_position(self):
    # The generic default standardises no raw column and weights no group.
    r, ids, dids, mask = ragged_batch(4)
    cfg = advantage.ReCalConfig(components=("a", "b", "c"), dataset_norm="none")
    out = advantage.recal_advantages(r, ids, 9, dids, 3, mask, config=cfg)
    want = np.asarray(advantage.componentwise_advantages(r, ids, 9, mask)).sum(1)
    np.testing.assert_allclose(out.advantages, want, atol=1e-5)
    np.testing.assert_array_equal(out.weights, mask)

  def test_inconsistent_config_names_the_field(self):
    for field, kwargs in (
        ("component_weights", dict(component_weights={"cost": 1.0})),
        ("variance_component", dict(variance_component="correctness")),
        ("dataset_norm_components", dict(dataset_norm_components=("cost",))),
        ("hierarchy", dict(hierarchy=advantage.Hierarchy(parents={"b": "format"}))),
        ("components", dict(components=("a", "a"))),
        ("dataset_norm", dict(dataset_norm="sometimes"))):
      with self.assertRaisesRegex(ValueError, f"ReCalConfig.{field}"):
        advantage.ReCalConfig(**{"components": ("a", "b"), **kwargs})

  def test_core_imports_nothing_from_routing(self):
    core = ("segments", "estimators", "hierarchy", "calibration", "recal_config", "advantage",
            "losses")
    root = pathlib.Path(advantage.__file__).parent
    for module in core:
      tree = ast.parse((root / f"{module}.py").read_text())
      for node in ast.walk(tree):
        names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                 [f"{node.module}.{a.name}" for a in node.names]
                 if isinstance(node, ast.ImportFrom) and node.module else [])
        for name in names:
          if name.startswith("recal_jax"):
            self.assertIn(name.split(".")[1], core, msg=f"{module} imports {name}")


class StageCompositionTest(absltest.TestCase):
  """Items 2, 3, 9: recal_advantages gives what its stage functions give."""

  def test_ddof_reaches_the_variance_weights(self):
    r, ids, dids, mask = ragged_batch(5)  # ragged: the ddof factor differs by group
    for h in ("std", "power"):
      cfg = advantage.method_config("recal", ddof=1, variance_h=h, variance_power=2.0)
      out = advantage.recal_advantages(r, ids, 9, dids, 3, mask, config=cfg)
      want, _ = calibration.variance_weights(r[:, 1], ids, 9, mask, h=h, power=2.0, ddof=1)
      np.testing.assert_allclose(out.weights, want, rtol=1e-6, err_msg=h)

  def test_balanced_datasets_have_equal_total_weight(self):
    rng = np.random.default_rng(6)
    r, ids, _, mask = ragged_batch(6, n=120, num_groups=30)
    dids = (ids % 3 == 0).astype(np.int32) + 2 * (ids % 5 == 0)  # unequal datasets
    r[:, 1] = np.where(dids[:, None] == 0, rng.random((120, 1)) < .5, r[:, 1:2])[:, 0]
    cfg = advantage.method_config("recal", balance_datasets=True)
    for layout in (None,):
      out = advantage.recal_advantages(r, ids, 30, dids, 4, mask, config=cfg,
                                       group_size=layout)
      w = np.asarray(out.weights)
      totals = np.bincount(dids, w, 4)[:3]
      np.testing.assert_allclose(totals, totals.mean(), rtol=1e-5)
      unbalanced = advantage.recal_advantages(
          r, ids, 30, dids, 4, mask, config=cfg.replace(balance_datasets=False))
      self.assertAlmostEqual(w.sum(), float(np.sum(unbalanced.weights)), places=3)

  def test_zero_spread_groups_counts_graded_scores(self):
    r = np.array([[1, .7, -.1], [1, .7, -.2], [1, .7, -.3],
                  [1, 1., -.1], [1, 0., -.2], [1, 1., -.3]], np.float32)
    ids = np.repeat([0, 1], 3)
    for layout in (None, 3):
      out = advantage.recal_advantages(r, ids, 2, config=advantage.method_config("recal"),
                                       group_size=layout)
      self.assertEqual(float(out.diagnostics["zero_spread_groups"]), 0.5)

  def test_recal_equals_its_stages(self):
    r, ids, dids, mask = ragged_batch(7)
    cfg = advantage.method_config("recal")
    out = advantage.recal_advantages(r, ids, 9, dids, 3, mask, config=cfg)
    cost = calibration.dataset_normalize(r[:, 2], dids, 3, mask)
    gate, gated = advantage.hierarchical_gate(
        np.stack([r[:, 0], r[:, 1], cost], 1), cfg.hierarchy, cfg.components)
    per = advantage.componentwise_advantages(gated, ids, 9, mask, gate=gate)
    adv = np.asarray(per) @ np.asarray(cfg.weight_vector(), np.float32)
    want = calibration.dataset_normalize(adv, dids, 3, mask, keep_zeros=True)
    np.testing.assert_allclose(out.advantages, want, atol=1e-5)
    weights, _ = calibration.variance_weights(r[:, 1], ids, 9, mask)
    np.testing.assert_allclose(out.weights, weights, rtol=1e-6)


class GdpoTest(absltest.TestCase):
  """Item 5: GDPO's singleton rule; the function and the preset agree."""

  def test_singleton_raw_gives_raw_components(self):
    r = np.array([[1., 0., -.5], [1., 1., -.2], [0., 1., -.3], [1., 0., -.4]], np.float32)
    ids = np.array([0, 1, 1, 2])  # groups 0 and 2 have one member
    raw = advantage.gdpo_advantages(r, ids, 3, singleton="raw", whiten_sum=False,
                                    component_weights=(1., 1., .5), eps=1e-4)
    lone = r[[0, 3]] @ np.array([1., 1., .5]) / (1 + 1e-4)
    np.testing.assert_allclose(np.asarray(raw)[[0, 3]], lone, rtol=1e-6)
    zero = advantage.gdpo_advantages(r, ids, 3, whiten_sum=False)
    np.testing.assert_array_equal(np.asarray(zero)[[0, 3]], 0.0)

  def test_function_equals_preset(self):
    r, ids, dids, mask = ragged_batch(8)
    cfg = advantage.method_config("gdpo")
    for layout in (None,):
      out = advantage.recal_advantages(r, ids, 9, dids, 3, mask, config=cfg, group_size=layout)
      want = advantage.gdpo_advantages(r, ids, 9, mask, component_weights=cfg.weight_vector())
      np.testing.assert_array_equal(out.advantages, want)


if __name__ == "__main__":
  absltest.main()
