"""experiments.compare end to end on a tiny synthetic run: files written, numbers consistent."""

import json
import os
import subprocess
import sys

import numpy as np

from experiments import compare
from recal_jax.data import make_synthetic

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_with_dataset_id_appends_one_hot():
  table = make_synthetic(200, seed=0)
  augmented = compare.with_dataset_id(table)
  assert augmented.feature_dim == table.feature_dim + table.num_datasets
  np.testing.assert_array_equal(augmented.features[:, table.feature_dim:].argmax(1),
                                table.dataset_ids)
  assert augmented.featurizer == table.featurizer + "+dataset_id"


def test_summarize_mean_and_std():
  def run(acc, cost):
    return {"test": {"accuracy": acc, "cost": cost, "macro_accuracy": acc, "macro_cost": cost,
                     "per_dataset": {"a": {"accuracy": acc, "cost": cost}}},
            "validation": {"accuracy": acc}}
  summary = compare.summarize({"m": [run(0.5, 1.0), run(0.7, 3.0)]})["m"]
  assert summary["accuracy"] == 0.6 and summary["cost"] == 2.0
  assert np.isclose(summary["accuracy_std"], 0.1) and np.isclose(summary["cost_std"], 1.0)
  assert summary["num_seeds"] == 2


def test_compare_command(tmp_path):
  workdir = str(tmp_path / "compare")
  proc = subprocess.run(
      [sys.executable, "-m", "experiments.compare",
       "--config=experiments/configs/quick.py", f"--workdir={workdir}", "--seeds=1",
       "--methods=recal", "--variants=features", "--num_train_steps=10",
       "--config.data.num_queries=600", "--config.eval_every_steps=5"],
      cwd=REPO, capture_output=True, text=True, timeout=600,
      env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert proc.returncode == 0, proc.stderr[-3000:]
  for name in ("results.json", "results.md", "cost_quality.png", "training_curves.png"):
    assert os.path.getsize(os.path.join(workdir, name)) > 0, name
  results = json.load(open(os.path.join(workdir, "results.json")))
  summary = results["summary"]
  assert {"recal", "best_single", "oracle (bound)", "erp", "knn", "mlp", "random",
          "category_best"} <= set(summary)
  # Every row of the markdown table is the JSON summary, rounded.
  text = open(os.path.join(workdir, "results.md")).read()
  recal = summary["recal"]
  row = next(line for line in text.splitlines() if line.startswith("| recal |"))
  assert f"{recal['macro_accuracy']:.3f} ± {recal['macro_accuracy_std']:.3f}" in row
  assert f"{recal['cost'] * 1e4:.2f}" in row
  # Every method, RL ones included, has a swept curve read off at matched cost.
  for name, s in summary.items():
    assert 0 < s["auc"] <= 1 and 0 < s["acc_at_half_best_cost"] <= 1, name
    assert s["acc_at_half_best_cost"] <= s["acc_at_best_cost"] + 1e-9, name
    assert "auc_std" in s and "acc_at_half_best_cost_std" in s, name
  assert len(results["runs"]["recal"][0]["test"]["curve"]) > 1
  assert f"{recal['auc']:.3f} ± {recal['auc_std']:.3f}" in row
  # The oracle bounds every router on the same test split.
  assert all(s["accuracy"] <= summary["oracle (bound)"]["accuracy"] + 1e-9
             for s in summary.values())


def test_plot_styles_are_distinct_and_oracle_is_drawn_once():
  names = [f"method{i}" for i in range(30)]
  styles = compare.plot_styles(names)
  assert len(set(styles.values())) == len(names)  # no two curves share colour and marker
  summary = {name: {} for name in ("oracle", "recal", "recal +id", "best_single", "random",
                                   "knn", "knn +id", "category_best", "erp +id")}
  assert compare.cost_quality_series(summary) == ["recal", "recal +id", "best_single", "random",
                                                  "knn", "knn +id", "category_best", "erp +id"]
