"""training.seeds: S seeds vmapped in one program == S single `train_and_evaluate` runs."""

import json
import os

import numpy as np
import pytest

from experiments.configs import default
from recal_jax import metrics_writer
from recal_jax import train
from recal_jax.data import synthetic
from recal_jax.training import seeds as seeds_lib

SEEDS = (2, 0)  # not range(S): the position in the stack is not the seed


def small_config():
  config = default.get_config()
  config.update_from_flattened_dict({
      "policy.hidden_dims": (32,), "batch_size": 32, "num_train_steps": 12,
      "log_every_steps": 4, "eval_every_steps": 4, "checkpoint_every_steps": 4,
      "num_devices": 1})
  return config


def comparable(metrics):
  """The numeric entries; wall-clock rates left out."""
  return {k: v for k, v in metrics.items() if isinstance(v, (int, float))
          and k != "train/steps_per_second" and not k.startswith("seconds/")}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  config = small_config()
  table = synthetic.make_synthetic(400, seed=3, feature_dim=16)
  root = tmp_path_factory.mktemp("seeds")
  vmapped_dirs = [str(root / f"vmapped{s}") for s in SEEDS]
  vmapped = seeds_lib.train_seeds(config, SEEDS, table=table, workdirs=vmapped_dirs)
  single, single_dirs = [], []
  for seed in SEEDS:
    config.seed = seed
    single_dirs.append(str(root / f"single{seed}"))
    single.append(train.train_and_evaluate(config, single_dirs[-1], table=table,
                                           show_progress=False))
  return dict(vmapped=vmapped, single=single, vmapped_dirs=vmapped_dirs,
              single_dirs=single_dirs)


def test_each_seed_equals_its_single_run(runs):
  for vmapped, single in zip(runs["vmapped"], runs["single"]):
    vmapped, single = comparable(vmapped), comparable(single)
    assert set(vmapped) == set(single)
    assert vmapped["best_step"] == single["best_step"]
    for key in single:
      np.testing.assert_allclose(vmapped[key], single[key], rtol=1e-5, atol=1e-6,
                                 err_msg=key)


def test_seeds_differ_so_a_mix_up_would_show(runs):
  first, second = (comparable(r) for r in runs["single"])
  differing = [k for k in first if k.startswith("train/")
               and not np.isclose(first[k], second[k], rtol=1e-4, atol=1e-6)]
  assert len(differing) > 5, differing
  assert not np.isclose(first["initial/validation/reward"], second["initial/validation/reward"])


def test_metrics_records_match_the_single_runs(runs):
  for vmapped_dir, single_dir in zip(runs["vmapped_dirs"], runs["single_dirs"]):
    vmapped = metrics_writer.read_metrics(vmapped_dir)
    single = metrics_writer.read_metrics(single_dir)
    assert [r["step"] for r in vmapped] == [r["step"] for r in single]
    for a, b in zip(vmapped, single):
      a, b = comparable(a), comparable(b)
      assert set(a) == set(b)
      for key in b:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-6, err_msg=key)
    with open(os.path.join(vmapped_dir, "final_metrics.json")) as f:
      assert json.load(f)["step"] == small_config().num_train_steps


def test_bad_arguments_are_named():
  config = small_config()
  with pytest.raises(train.ConfigError, match="distinct"):
    seeds_lib.train_seeds(config, [1, 1])
  with pytest.raises(train.ConfigError, match="workdirs"):
    seeds_lib.train_seeds(config, [0, 1], workdirs=["/tmp/x"])
  config.environment = "live"
  with pytest.raises(train.ConfigError, match="logged"):
    seeds_lib.train_seeds(config, [0])


def test_best_params_are_the_single_runs_best_checkpoint(runs):
  """'best_params' (what compare sweeps the cost knob of) == the single run's
  best checkpoint as `Router.load` restores it."""
  import jax  # pylint: disable=import-outside-toplevel
  from recal_jax import router as router_lib  # pylint: disable=import-outside-toplevel
  for vmapped, single_dir in zip(runs["vmapped"], runs["single_dirs"]):
    restored = router_lib.Router.load(single_dir, text_featurizer=False).params
    got, want = jax.tree.leaves(vmapped["best_params"]), jax.tree.leaves(restored)
    assert len(got) == len(want) > 0
    for a, b in zip(got, want):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
