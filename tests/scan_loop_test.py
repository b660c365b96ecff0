"""experiments/examples/scan_loop.py: the purejaxrl-style ReCal loop."""

import ast
import pathlib

import jax
import numpy as np
import pytest

from experiments.examples import scan_loop

TINY = dict(scan_loop.DEFAULT_CONFIG, num_queries=800, num_steps=60,
            batch_queries=16, group_size=4)


@pytest.fixture(scope="module")
def runs():
  table, state, metrics, lines = scan_loop.run(TINY, num_seeds=2, seed=0)  # vmapped
  single = jax.jit(scan_loop.make_train(TINY, table))
  keys = jax.random.split(jax.random.PRNGKey(0), 2)
  separate = [jax.block_until_ready(single(k)) for k in keys]
  return table, (state, metrics), separate, lines


def test_it_learns(runs):
  table, (state, metrics), _, _ = runs
  correctness = np.asarray(metrics["correctness"])  # [seeds, steps]
  assert correctness.shape == (2, TINY["num_steps"])
  first, last = correctness[:, :10].mean(1), correctness[:, -10:].mean(1)
  assert (last > first + 0.1).all(), (first, last)
  accuracy, _ = jax.vmap(scan_loop.evaluate, in_axes=(0, None))(state.params, table)
  random_accuracy, _ = scan_loop.reference_points(table)["random arm"]
  assert (np.asarray(accuracy) > random_accuracy + 0.08).all(), (accuracy, random_accuracy)
  # The running per-dataset statistics rode along in the scan carry.
  assert (np.asarray(state.dataset_state.count) > 0).all()
  assert (np.asarray(state.dataset_state.count) <= TINY["num_steps"]).all()


def test_vmapped_seeds_equal_separate_runs(runs):
  _, (state, metrics), separate, _ = runs
  for seed, (one_state, one_metrics) in enumerate(separate):
    # Same queries, routes and rewards at every step, bit for bit ...
    for name in metrics:
      np.testing.assert_array_equal(np.asarray(metrics[name][seed]),
                                    np.asarray(one_metrics[name]), err_msg=name)
    np.testing.assert_array_equal(np.asarray(state.dataset_state.count[seed]),
                                  np.asarray(one_state.dataset_state.count))
    # ... and parameters equal up to float32 rounding (XLA orders the batched
    # matmul's sums differently: measured max difference ~3e-7).
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(one_state.params)):
      np.testing.assert_allclose(np.asarray(a[seed]), np.asarray(b), rtol=0, atol=1e-5)


def test_imports_only_the_public_core_and_data():
  source = pathlib.Path(scan_loop.__file__).read_text()
  modules = set()
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, ast.ImportFrom) and node.module.startswith("recal_jax"):
      modules |= {f"{node.module}.{alias.name}" for alias in node.names}
    elif isinstance(node, ast.Import):
      modules |= {alias.name for alias in node.names if alias.name.startswith("recal_jax")}
  allowed = {"recal_jax.advantage", "recal_jax.calibration", "recal_jax.losses",
             "recal_jax.data.make_synthetic", "recal_jax.data.table"}
  assert modules and modules <= allowed, modules - allowed


def test_run_reports_measured_lines(runs):
  lines = runs[3]
  assert lines[0].startswith("2 seeds x 60 updates x 16x4 rollouts: compile ")
  assert lines[1].startswith("seed 0: validation accuracy ") and "USD / 1k queries" in lines[1]
  assert [line.split(":")[0] for line in lines[3:]] == ["best single arm", "random arm", "oracle"]
