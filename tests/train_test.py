"""Tests for recal_jax.train and experiments/train.py (end to end, small)."""

import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from unittest import mock

from absl import flags
from absl.testing import absltest
import jax
import numpy as np
import orbax.checkpoint as ocp

# `experiments` is imported from the repository root (an editable install made
# before experiments/__init__.py existed only maps `recal_jax`).
_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO_ROOT not in sys.path:
  sys.path.insert(0, _REPO_ROOT)

from experiments.configs import default  # pylint: disable=g-import-not-at-top
from experiments.configs import quick
from recal_jax import checkpointing
from recal_jax import metrics_writer
from recal_jax import policies
from recal_jax import rollout as rollout_lib
from recal_jax import train
from recal_jax.data import synthetic

_TABLE = None


def small_table():
  global _TABLE
  if _TABLE is None:
    _TABLE = synthetic.make_synthetic(600, seed=3, feature_dim=16)
  return _TABLE


def small_config(kind="categorical", steps=40):
  config = default.get_config()
  config.data.num_queries = 600
  config.policy.kind = kind
  config.policy.hidden_dims = (32,)
  config.policy.embedding_dim = 16
  config.policy.state_dim = 32
  config.policy.token_embedding_dim = 16
  config.batch_size = 32
  config.group_size = 8
  config.num_train_steps = steps
  config.warmup_steps = 0
  config.log_every_steps = 10
  config.eval_every_steps = 20
  config.checkpoint_every_steps = 20
  return config


def _tempdir(test_case):
  """A fresh directory removed after the test (works under pytest and absltest)."""
  directory = tempfile.TemporaryDirectory()
  test_case.addCleanup(directory.cleanup)
  return directory.name


def _params_at(workdir, step):
  manager = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"))
  restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  manager.close()
  return restored.state["params"]


class QuerySamplerTest(absltest.TestCase):

  def test_epochs_are_permutations_and_steps_are_pure(self):
    sampler = train.QuerySampler(10, 4, seed=0)
    stream = np.concatenate([sampler.indices(s) for s in range(5)])  # 2 epochs
    self.assertCountEqual(stream[:10], range(10))
    self.assertCountEqual(stream[10:20], range(10))
    np.testing.assert_array_equal(sampler.indices(3), train.QuerySampler(10, 4, 0).indices(3))


class TrainEndToEndTest(absltest.TestCase):

  def _check_learns(self, kind, steps, learning_rate):
    config = small_config(kind, steps)
    config.learning_rate = learning_rate
    workdir = _tempdir(self)
    result = train.train_and_evaluate(config, workdir, table=small_table())
    self.assertEqual(result["step"], steps)
    self.assertTrue(np.isfinite(result["train/loss/loss"]))
    initial, final = (result["initial/validation/reward"],
                      result["final/validation/reward"])
    self.assertGreater(final, initial + 0.05, msg=f"{kind}: {initial} -> {final}")
    return result

  def test_categorical_router_learns(self):
    result = self._check_learns("categorical", 40, 3e-3)
    self.assertEqual(result["final/validation/malformed_rate"], 0.0)
    for key in ("router", "best_single", "oracle"):
      self.assertIn(f"{key}/test/accuracy", result)

  def test_token_router_learns_the_format(self):
    result = self._check_learns("token", 50, 5e-3)
    self.assertEqual(result["initial/validation/malformed_rate"], 1.0)
    self.assertLess(result["final/validation/malformed_rate"], 0.5)


class DataParallelTest(absltest.TestCase):

  num_steps = 1

  def _one_step(self, num_devices, kind):
    table = small_table()
    config = small_config(kind)
    config.batch_size = 16
    # Adam's first step is lr * g / (|g| + eps): for a gradient entry at the
    # float-noise level (~1e-9; reduction order differs with the device count)
    # eps = 1e-8 would turn rounding noise into visible parameter changes.
    config.adam_eps = 1e-6
    train_table = table.subset("train")
    mesh = train.make_mesh(num_devices)
    policy = policies.make_policy(config.policy, table)
    tx = train.make_optimizer(config)
    fns = train.make_step_functions(
        policy, tx, train.method_from_config(config), config,
        table=rollout_lib.device_table(train_table, fns_replicated(mesh)),
        num_datasets=table.num_datasets, mesh=mesh)
    state = jax.jit(lambda rng: train.init_state(
        policy, tx, rng, table.feature_dim, table.num_datasets),
                    out_shardings=fns.replicated)(jax.random.key(0))
    for step in range(self.num_steps):
      queries = train.global_batch(
          train.QuerySampler(train_table.num_queries, 16, 0).indices(step),
          fns.batch_sharding)
      state, metrics = fns.train_step(state, queries)
      metrics = jax.device_get(metrics)  # block before the next dispatch
    return jax.device_get(state.params), metrics

  def test_four_devices_match_one_device(self):
    self.assertGreaterEqual(jax.device_count(), 4, "tests/conftest.py sets 4 CPU devices")
    for kind in ("categorical", "token"):
      params_1, metrics_1 = self._one_step(1, kind)
      params_4, metrics_4 = self._one_step(4, kind)
      jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5),
                   params_1, params_4)
      np.testing.assert_allclose(metrics_1["loss/loss"], metrics_4["loss/loss"],
                                 rtol=1e-5, atol=1e-6)
      np.testing.assert_allclose(metrics_1["loss/normalizer"], metrics_4["loss/normalizer"],
                                 rtol=1e-6)
      np.testing.assert_allclose(metrics_1["grad_norm"], metrics_4["grad_norm"], rtol=1e-5)


def fns_replicated(mesh):
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())


class ResumeTest(absltest.TestCase):
  """Resuming, the live-environment path and workdir checks, against one run.

  Chunks of 6 steps on one device: FusedStepsTest's compiled programs."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls._directory = tempfile.TemporaryDirectory()
    cls.straight = cls._directory.name
    train.train_and_evaluate(_fused_config(steps=12), cls.straight, table=small_table())

  @classmethod
  def tearDownClass(cls):
    cls._directory.cleanup()
    super().tearDownClass()

  def test_resume_gives_identical_params(self):
    resumed = _tempdir(self)
    train.train_and_evaluate(_fused_config(steps=6), resumed, table=small_table())
    result = train.train_and_evaluate(_fused_config(steps=12), resumed,
                                      table=small_table())  # a fresh call
    self.assertEqual(result["step"], 12)
    self.assertNotIn("initial/validation/reward", result)  # it did resume
    jax.tree.map(np.testing.assert_array_equal, _params_at(self.straight, 12),
                 _params_at(resumed, 12))

  def test_live_environment_path_matches_fused_step(self):
    config = _fused_config(steps=6)
    config.environment = "live"  # LoggedEnvironment through the host callback
    live = _tempdir(self)
    train.train_and_evaluate(config, live, table=small_table())
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6),
                 _params_at(self.straight, 6), _params_at(live, 6))

  def test_other_table_in_workdir_is_rejected(self):
    other = synthetic.make_synthetic(600, seed=4, feature_dim=16)
    table_json = os.path.join(self.straight, "table.json")
    before = open(table_json).read()
    with self.assertRaisesRegex(ValueError, "fingerprint"):
      train.train_and_evaluate(_fused_config(steps=18), self.straight, table=other)
    self.assertEqual(open(table_json).read(), before)  # a refused run changes nothing


class NonFiniteTest(absltest.TestCase):

  def test_non_finite_update_stops_with_named_step_and_keeps_checkpoint(self):
    config = small_config(steps=10)
    config.learning_rate = float("inf")
    config.checkpoint_every_steps = 1
    workdir = _tempdir(self)
    with self.assertRaisesRegex(train.NonFiniteError, r"step \d+: non-finite \S+"):
      train.train_and_evaluate(config, workdir, table=small_table())
    checkpointer = checkpointing.Checkpointer(workdir)
    latest = checkpointer.latest_step()
    self.assertIsNotNone(latest)
    params = _params_at(workdir, latest)
    self.assertTrue(all(np.isfinite(x).all() for x in jax.tree.leaves(params)))


def _digest(params):
  """sha256 (16 hex digits) of the leaves' bytes, in key-path order."""
  h = hashlib.sha256()
  for _, leaf in sorted(jax.tree_util.tree_leaves_with_path(params),
                        key=lambda kv: jax.tree_util.keystr(kv[0])):
    h.update(np.asarray(leaf).tobytes())
  return h.hexdigest()[:16]


def _fused_config(steps=12, updates=1, log_every=6):
  """Chunks of `log_every` steps on one device; the default (6) is the program most runs
  here share (tests/conftest.py: one persistent compilation cache per test run)."""
  config = small_config(steps=steps)
  config.num_updates_per_batch = updates
  config.num_devices = 1
  config.log_every_steps = log_every
  config.eval_every_steps = 6
  config.checkpoint_every_steps = 6
  return config


class FusedStepsTest(absltest.TestCase):
  """Chunks of steps under lax.scan compute what the per-step loop computed."""

  # Recorded with the per-step loop of main ebc1891 (one dispatch per step,
  # Python-unrolled updates), which these chunked runs matched bit for bit
  # (updates=2: to 1e-5). Re-recorded at the merge of issue 11's core (exact
  # zeros, named weights) and issue 13's default config (text features, new
  # learning rate), which change the maths: params after 12 steps of
  # `_fused_config()`; chunks of 6 and of 2 still give the same bits.
  # Re-recorded (was 1c6b7a47d97f7bcf) when the segment moments became the
  # corrected two-pass algorithm (issue 11 item 8): float rounding only, the
  # two-update run below still matches its record to 1e-5.
  # Re-recorded (was 8d6bed4a9abd18dd) when the query network began to run
  # once per query instead of once per rollout (issue 12): a different
  # summation order of the gradient, rounding only (the two-update record
  # below still holds to 1e-5).
  RECORDED_DIGEST = "3728ace68ce68bb5"
  # Same, with num_updates_per_batch=2: (sum, sum of |x|) of each leaf.
  RECORDED_TWO_UPDATES = {
      "['params']['arm_bias']": (0.0347859188914299, 0.17670837603509426),
      "['params']['arm_embeddings']": (-0.07728495981791639, 2.2794599915832805),
      "['params']['query_encoder']['dense_0']['bias']": (0.2694457499310374,
                                                         0.4632451944053173),
      "['params']['query_encoder']['dense_0']['kernel']": (0.13791131487232633,
                                                           105.81507180517656),
      "['params']['query_encoder']['input_norm']['bias']": (-0.0028859750600531697,
                                                            0.22729767847340554),
      "['params']['query_encoder']['input_norm']['scale']": (16.185662806034088,
                                                             16.185662806034088),
      "['params']['query_projection']['bias']": (0.02627048996509984, 0.21494884853018448),
      "['params']['query_projection']['kernel']": (-0.8062725391355343, 78.82577848708024),
  }

  def test_chunks_are_bitwise_the_recorded_per_step_run(self):
    chunked = _tempdir(self)
    train.train_and_evaluate(_fused_config(), chunked, table=small_table())
    self.assertEqual(_digest(_params_at(chunked, 12)), self.RECORDED_DIGEST)
    # Other chunk boundaries (chunks of 2): the same bits.
    pairs = _tempdir(self)
    train.train_and_evaluate(_fused_config(log_every=2), pairs, table=small_table())
    self.assertEqual(_digest(_params_at(pairs, 12)), self.RECORDED_DIGEST)

  def test_updates_per_batch_scan_matches_the_recorded_unrolled_updates(self):
    """A rolled lax.scan may round differently from the unrolled loop: to 1e-5."""
    workdir = _tempdir(self)
    train.train_and_evaluate(_fused_config(updates=2), workdir,
                             table=small_table())
    params = _params_at(workdir, 12)
    got = {jax.tree_util.keystr(path): (np.asarray(x, np.float64).sum(),
                                        np.abs(np.asarray(x, np.float64)).sum())
           for path, x in jax.tree_util.tree_leaves_with_path(params)}
    self.assertEqual(got.keys(), self.RECORDED_TWO_UPDATES.keys())
    for name, want in self.RECORDED_TWO_UPDATES.items():
      np.testing.assert_allclose(got[name], want, rtol=1e-5, atol=1e-5, err_msg=name)

  def test_one_dispatch_per_chunk(self):
    """The loop dispatches the chunk function once per logging window."""
    calls = []
    original = train.make_step_functions

    def counting(*args, **kwargs):
      fns = original(*args, **kwargs)
      chunk, step = fns.train_chunk, fns.train_step
      fns.train_chunk = lambda state, idx: (calls.append(idx.shape), chunk(state, idx))[1]
      fns.train_step = lambda *a: self.fail("per-step dispatch")
      del step
      return fns

    with mock.patch("recal_jax.training.learner.make_step_functions", counting):
      train.train_and_evaluate(_fused_config(), _tempdir(self),
                               table=small_table())
    self.assertEqual(calls, [(6, 32), (6, 32)])


class WorkdirRecordTest(absltest.TestCase):
  """Resuming checks the config; metrics.jsonl lists each step once."""

  def test_resume_with_another_method_is_refused_naming_the_field(self):
    workdir = _tempdir(self)
    train.train_and_evaluate(_fused_config(steps=6), workdir, table=small_table())
    config_json = os.path.join(workdir, "config.json")
    before = open(config_json).read()
    other = _fused_config(steps=12)  # chunks of 6: one program per method
    other.method = "grpo"
    with self.assertRaisesRegex(train.WorkdirConflictError,
                                r"method: 'recal' -> 'grpo'.*override_saved_config"):
      train.train_and_evaluate(other, workdir, table=small_table())
    self.assertEqual(open(config_json).read(), before)
    other.override_saved_config = True
    result = train.train_and_evaluate(other, workdir, table=small_table())
    self.assertEqual(result["step"], 12)
    self.assertEqual(json.load(open(config_json))["method"], "grpo")
    self.assertEqual(open(os.path.join(workdir, "config.6.json")).read(), before)

  def test_steps_rerun_after_a_kill_are_logged_once(self):
    workdir = _tempdir(self)
    train.train_and_evaluate(_fused_config(steps=12, log_every=2), workdir,
                             table=small_table())
    # A kill after steps 7-12 were logged but before checkpoint 12 committed.
    shutil.rmtree(os.path.join(workdir, "checkpoints", "12"))
    os.remove(os.path.join(workdir, "final_metrics.json"))
    before = metrics_writer.read_metrics(workdir)
    train.train_and_evaluate(_fused_config(steps=12, log_every=2), workdir,
                             table=small_table())
    records = metrics_writer.read_metrics(workdir)
    train_steps = [r["step"] for r in records if "train/loss/loss" in r]
    self.assertEqual(train_steps, [2, 4, 6, 8, 10, 12])
    self.assertEqual([r for r in records if r["step"] <= 6],
                     [r for r in before if r["step"] <= 6])


class ConfigChecksTest(absltest.TestCase):

  def test_negative_num_train_steps_is_an_error(self):
    config = _fused_config()
    config.num_train_steps = -5
    with self.assertRaisesRegex(train.ConfigError, r"num_train_steps must be >= 0, got -5"):
      train.train_and_evaluate(config, _tempdir(self), table=small_table())

  def test_batch_larger_than_the_train_split_warns(self):
    table = synthetic.make_synthetic(60, seed=3, feature_dim=16)
    config = _fused_config(steps=2, log_every=2)
    config.batch_size = 64
    with self.assertLogs(level="WARNING") as logs:
      train.train_and_evaluate(config, _tempdir(self), table=table)
    self.assertTrue(any("batch_size=64 is larger than the" in line for line in logs.output))

  def test_untrained_best_checkpoint_is_named_in_the_table(self):
    config = _fused_config(steps=6)
    config.learning_rate = 0.0  # no step beats step 0: the earliest best is kept
    result = train.train_and_evaluate(config, _tempdir(self), table=small_table())
    self.assertEqual(result["best_step"], 0)
    self.assertIn("UNTRAINED router", train.comparison_rows(result)[0]["policy"])
    result["best_step"] = 6
    self.assertEqual(train.comparison_rows(result)[0]["policy"], "trained router")


class ExperimentMainTest(absltest.TestCase):

  def _run_quick(self, steps, every, *flags_, env=None):
    """`python -m experiments.train` on the quick config (300 queries), checked to exit 0."""
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.train", f"--config={quick.__file__}",
         f"--workdir={_tempdir(self)}", *flags_, f"--config.num_train_steps={steps}",
         "--config.data.num_queries=300"] + [
             f"--config.{name}_every_steps={every}" for name in ("log", "eval", "checkpoint")],
        cwd=_REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
    return proc

  def test_default_output_is_a_few_short_lines(self):
    """No config dump, no TPU-probe or Orbax INFO lines, lines < 200 chars."""
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}  # probes TPU
    proc = self._run_quick(8, 4, env=env)
    lines = [l for l in (proc.stdout + proc.stderr).splitlines() if l.strip()]
    self.assertLessEqual(len(lines), 25, "\n".join(lines))
    self.assertEqual([l for l in lines if len(l) >= 200], [])
    for noise in ("Unable to initialize backend", "orbax", "Config:", "checkpoint_manager"):
      self.assertFalse([l for l in lines if noise in l], noise)
    self.assertTrue(any("step 8 train: reward=" in l for l in lines), "\n".join(lines))

  def test_verbose_checkpointing_shows_orbax_lines(self):
    """--verbose_checkpointing turns the console filter off (at the default verbosity)."""
    proc = self._run_quick(8, 4, "--verbose_checkpointing")  # the compiled programs above
    orbax = [l for l in proc.stderr.splitlines() if "checkpoint_manager" in l or "orbax" in l]
    self.assertGreater(len(orbax), 2, proc.stderr[-3000:])

  def test_quick_config_through_main(self):
    from experiments import train as train_main  # pylint: disable=import-outside-toplevel
    workdir = _tempdir(self)
    argv = ["train", "--config=" + quick.__file__.replace(".pyc", ".py"),
            f"--workdir={workdir}", "--config.num_train_steps=4",
            "--config.data.num_queries=300", "--config.eval_every_steps=2",
            "--config.checkpoint_every_steps=2", "--config.log_every_steps=2"]
    # config_flags finds the --config.* overrides in sys.argv.
    flags.FLAGS.unparse_flags()
    with mock.patch.object(sys, "argv", argv):
      flags.FLAGS(argv)
      try:
        train_main.main(argv[:1])
      finally:
        flags.FLAGS.unparse_flags()
    records = metrics_writer.read_metrics(workdir)
    self.assertTrue(any("train/loss/loss" in r for r in records))
    self.assertTrue(any("validation/accuracy" in r for r in records))
    self.assertTrue(glob.glob(os.path.join(workdir, "tensorboard", "events.out.tfevents.*")))
    self.assertEqual(sorted(map(int, os.listdir(os.path.join(workdir, "checkpoints")))),
                     [0, 2, 4])
    checkpointer = checkpointing.Checkpointer(workdir, best_metric="validation/reward")
    self.assertIn(checkpointer.best_step(), [0, 2, 4])  # ranked by Orbax metrics
    checkpointer.close()
    with open(os.path.join(workdir, "config.json")) as f:
      self.assertEqual(json.load(f)["num_train_steps"], 4)
    with open(os.path.join(workdir, "table.json")) as f:
      self.assertEqual(json.load(f)["name"], "synthetic")
    with open(os.path.join(workdir, "final_metrics.json")) as f:
      self.assertIn("router/validation/accuracy", json.load(f))


if __name__ == "__main__":
  absltest.main()
