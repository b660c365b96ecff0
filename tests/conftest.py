"""Test setup: four fake CPU devices, set before JAX is first imported; scratch dirs.

Multi-device code (sharded batches, `shard_map`, `pmap`) is tested on these
devices; see WORKSPACE.md for why each multi-device step is blocked on before
the next is dispatched.
"""
import atexit
import os
import shutil
import tempfile

# Nothing a test builds goes to ~/.cache (the TFDS build cache's default) or
# stays behind: one scratch directory per test process, removed at exit.
_SCRATCH = tempfile.mkdtemp(prefix="recal-tests-")
atexit.register(shutil.rmtree, _SCRATCH, ignore_errors=True)
os.environ["RECAL_TFDS_DIR"] = os.path.join(_SCRATCH, "tfds")
os.environ["TFDS_DATA_DIR"] = os.path.join(_SCRATCH, "tensorflow_datasets")

# One persistent XLA compilation cache for the whole test run: the test
# processes (pytest-xdist workers inherit this environment from the process
# that imports conftest first) and the apps the tests start as subprocesses.
# Every `train_and_evaluate` call jits fresh functions, and one chunk program
# takes ~20 CPU-s to compile; the tests that train give their runs the same
# shapes (see train_test.py) so most of these compiles become cache reads.
if "RECAL_TEST_COMPILATION_CACHE" not in os.environ:
  os.environ["RECAL_TEST_COMPILATION_CACHE"] = os.path.join(_SCRATCH, "jax_cache")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = os.environ["RECAL_TEST_COMPILATION_CACHE"]
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.5"
  os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"

_FLAG = "--xla_force_host_platform_device_count=4"
if _FLAG not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FLAG).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402  (must come after XLA_FLAGS)

jax.config.update("jax_enable_x64", False)

import pytest  # noqa: E402

# Minutes-long end-to-end tests in other modules, marked `slow` here so the
# README's test command stays short; CI runs them (`.ci/run`: `pytest -m slow`).
# Chosen by measured duration (`pytest --durations=60`, see README "Set up").
SLOW_TESTS = frozenset({
    "tests/train_test.py::DataParallelTest::test_four_devices_match_one_device",
    "tests/train_test.py::TrainEndToEndTest::test_token_router_learns_the_format",
    "tests/train_test.py::TrainEndToEndTest::test_categorical_router_learns",
    "tests/train_test.py::ExperimentMainTest::test_quick_config_through_main",
    "tests/compare_test.py::test_compare_command",
    "tests/rollout_test.py::RolloutTest::test_logged_environment_reproduces_the_in_jit_lookup",
    "tests/reliability_test.py::test_sigkill_at_random_step_then_rerun_equals_uninterrupted_run",
    "tests/reliability_test.py::"
    "test_sigterm_checkpoints_the_current_step_and_rerun_equals_uninterrupted_run",
    "tests/train_test.py::ResumeTest::test_live_environment_path_matches_fused_step",
    "tests/real_data_test.py::test_routellm_counts_after_contamination_drop",
    "tests/policies_test.py::TokenPolicyTest::"
    "test_arm_log_probs_equal_teacher_forced_route_log_probs",
    # Large by what they check: every method preset x both layouts (12 compiles of the
    # whole `recal_advantages`, ~50 s on an idle machine), and N = 2^20 rows.
    "tests/exactness_test.py::ZeroSpreadTest::test_recal_keeps_zero_through_dataset_normalisation",
    "tests/exactness_test.py::PrecisionAtScaleTest::test_recal_at_2_pow_20",
    # The app's own runs (a subprocess or a whole `experiments.train` main each, 12-19 s on an
    # idle machine), all in train_test, the module that sets the tail of command 2 under
    # `--dist loadscope`: its output, its NaN stop, its untrained-best warning, its resume
    # refusal. The library paths they exercise keep fast tests of their own.
    "tests/train_test.py::ExperimentMainTest::test_default_output_is_a_few_short_lines",
    "tests/train_test.py::NonFiniteTest::"
    "test_non_finite_update_stops_with_named_step_and_keeps_checkpoint",
    "tests/train_test.py::ConfigChecksTest::test_untrained_best_checkpoint_is_named_in_the_table",
    "tests/train_test.py::WorkdirRecordTest::"
    "test_resume_with_another_method_is_refused_naming_the_field",
    # Whole example runs: the scan-loop example's training runs (a module fixture, ~21 s) and the
    # README's command 1 -> route -> Python path at 50 steps (~23 s; its as-written twin is
    # marked slow in readme_test).
    # With the four above, command 2 went from 377.6 s (d021c9e) to 365.0 s (f53b556) in CI.
    "tests/scan_loop_test.py::test_it_learns",
    "tests/scan_loop_test.py::test_vmapped_seeds_equal_separate_runs",
    "tests/scan_loop_test.py::test_run_reports_measured_lines",
    "tests/readme_test.py::test_readme_train_then_route_then_python_short",
})


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
  del config
  for item in items:
    if item.nodeid in SLOW_TESTS:
      item.add_marker(pytest.mark.slow)
