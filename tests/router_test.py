"""Router.load / Router.route and the experiments.route command line."""

import glob
import json
import os
import re
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from experiments import route as route_cli
from experiments.configs import quick
from recal_jax import checkpointing
from recal_jax import evaluate
from recal_jax import outcome_model
from recal_jax import router as router_lib
from recal_jax import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """The quick config (hashing features, few steps), trained once."""
  workdir = str(tmp_path_factory.mktemp("router_quick"))
  config = quick.get_config()
  config.data.featurizer = "hashing"
  config.num_train_steps = 30
  # Chunks of 15 steps: one compiled chunk program (uneven boundaries compile one per length).
  config.log_every_steps = config.eval_every_steps = config.checkpoint_every_steps = 15
  config.num_devices = 1
  table = train.load_data(config)
  train.train_and_evaluate(config, workdir, table=table)
  return workdir, table


def test_same_decisions_as_evaluation(trained):
  workdir, table = trained
  router = router_lib.Router.load(workdir)
  validation = table.subset("validation")
  result = router.route(validation.features)
  # The evaluation code's greedy routes with the same (best) parameters.
  greedy = jax.jit(lambda p, f: router.policy.greedy(p, f).arm_indices)(
      router.params, validation.features)
  np.testing.assert_array_equal(result.arm_index, np.asarray(greedy))
  checkpointer = checkpointing.Checkpointer(workdir, best_metric=quick.get_config().best_metric)
  best = checkpointer.evaluated_steps()[checkpointer.best_step()]  # Orbax's saved metrics
  checkpointer.close()
  assert router.step == best["step"]
  metrics = evaluate.route_metrics(validation, result.arm_index)
  assert metrics["accuracy"] == pytest.approx(best["validation/accuracy"], abs=1e-9)
  assert metrics["cost"] == pytest.approx(best["validation/cost"], rel=1e-6)
  # Texts are featurised exactly like the training data.
  from_text = router.route(list(validation.texts))
  np.testing.assert_array_equal(from_text.arm_index, result.arm_index)
  np.testing.assert_allclose(result.probabilities.sum(1), 1.0, atol=1e-5)
  assert (result.predicted_score >= 0).all() and (result.predicted_score <= 1).all()
  assert (result.expected_cost >= 0).all()


def test_budget_and_cost_weight(trained):
  workdir, table = trained
  router = router_lib.Router.load(workdir)
  features = table.subset("test").features
  free = router.route(features, cost_weight=0.0)
  tight = router.route(features, budget=2e-4)
  assert tight.budget_met
  assert tight.expected_cost.mean() <= 2e-4
  assert tight.expected_cost.mean() <= free.expected_cost.mean()
  impossible = router.route(features, budget=0.0)
  assert impossible.budget_met is False
  np.testing.assert_array_equal(impossible.arm_index,
                                np.argmin(np.asarray(router.outcome.predict(features)[1]), 1))
  with pytest.raises(ValueError, match="not both"):
    router.route(features, cost_weight=1.0, budget=1e-3)
  with pytest.raises(ValueError, match="budget must be"):
    router.route(features, budget=-1.0)


def test_arm_scores_sweep_is_route_with_cost_weight(trained):
  """curves.sweep_choices over arm_scores picks what route(cost_weight=w) picks."""
  from recal_jax import curves  # pylint: disable=import-outside-toplevel
  workdir, table = trained
  router = router_lib.Router.load(workdir, text_featurizer=False)
  assert router.featurizer is None
  features = table.subset("test").features
  logp, cost = router.arm_scores(features)
  weights = [0.0, 1e2, 1e3, 1e4, 1e5]
  for w, choices in zip(weights, curves.sweep_choices(logp, cost, weights)):
    routed = router.route(features, cost_weight=w).arm_index
    # route breaks exact ties by index, the sweep by expected cost: only ties may differ.
    assert np.mean(choices == routed) > 0.99, w


def test_load_restores_params_without_the_trainer(trained):
  """Router.load reads the params item alone: no trainer, optimizer or state."""
  workdir, _ = trained
  code = ("import sys; from recal_jax import router; r = router.Router.load(sys.argv[1]); "
          "bad = [m for m in sys.modules if m.startswith(('recal_jax.train', 'optax'))]; "
          "assert not bad, bad; print(r.step)")
  out = subprocess.run([sys.executable, "-c", code, workdir], cwd=REPO, capture_output=True,
                       text=True, env=dict(os.environ, JAX_PLATFORMS="cpu"), timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  assert int(out.stdout.split()[-1]) == router_lib.Router.load(workdir).step
  # Loading is quiet: no absl / Orbax warning lines (e.g. "Metadata file does
  # not exist" from reading the params item through a step-level Checkpointer).
  warnings = [line for line in out.stderr.splitlines()
              if re.match(r"W\d{4} |WARNING:", line)]
  assert not warnings, warnings


def test_latest_and_step_checkpoints(trained):
  workdir, _ = trained
  assert router_lib.Router.load(workdir, checkpoint="latest").step == 30
  assert router_lib.Router.load(workdir, checkpoint=15).step == 15
  with pytest.raises(FileNotFoundError, match="no checkpoint at step 7"):
    router_lib.Router.load(workdir, checkpoint=7)


def test_clear_errors(trained, tmp_path):
  workdir, table = trained
  with pytest.raises(FileNotFoundError, match="config.json is missing"):
    router_lib.Router.load(str(tmp_path))
  with pytest.raises(ValueError, match="trained with featurizer 'hashing-v1"):
    router_lib.Router.load(workdir, featurizer="minilm-l6-v2:maxlen=256")
  router = router_lib.Router.load(workdir)
  with pytest.raises(ValueError, match=r"features must have shape \[Q, 512\]"):
    router.route(np.zeros((3, 7), np.float32))
  copy = str(tmp_path / "copy")
  shutil.copytree(workdir, copy)
  for metrics in glob.glob(os.path.join(copy, "checkpoints", "*", "metrics")):
    shutil.rmtree(metrics)  # no checkpoint with validation metrics: none is "best"
  with pytest.raises(FileNotFoundError, match="no best checkpoint"):
    router_lib.Router.load(copy)
  os.remove(os.path.join(copy, outcome_model.FILENAME))
  with pytest.raises(FileNotFoundError, match="no outcome model"):
    router_lib.Router.load(copy, checkpoint="latest")


def test_query_file_errors_are_per_line(trained, tmp_path):
  workdir, table = trained
  router = router_lib.Router.load(workdir)
  path = tmp_path / "queries.jsonl"
  path.write_text("\n".join([
      json.dumps({"query_id": "a", "query": table.texts[0]}),
      "{not json",
      json.dumps({"query_id": "c", "features": [0.0] * 3}),  # wrong dimension
      json.dumps({"query_id": "d", "text": "wrong field"}),
      json.dumps({"query_id": "e", "query": table.texts[1]}),
      json.dumps({"qeury_id": "f", "query": table.texts[2]}),  # misspelt: not ignored
  ]) + "\n")
  items, errors = route_cli.read_queries(str(path))
  records, route_errors = route_cli.route_items(router, items)
  assert [r["query_id"] for _, r in records] == ["a", "e"]
  lines = dict(errors + route_errors)
  assert set(lines) == {2, 3, 4, 6}
  assert "bad JSON" in lines[2] and "[Q, 512]" in lines[3] and "'query'" in lines[4]
  assert "unknown field 'qeury_id'; did you mean 'query_id'?" in lines[6]
  empty = tmp_path / "empty.jsonl"
  empty.write_text("\n")
  with pytest.raises(route_cli.QueryFileError, match="has no queries"):
    route_cli.read_queries(str(empty))


def test_command_line(trained, tmp_path):
  workdir, table = trained
  path = tmp_path / "q.jsonl"
  path.write_text("".join(json.dumps({"query_id": i, "query": t}) + "\n"
                          for i, t in enumerate(table.texts[:5])) + "oops\n")
  proc = subprocess.run(
      [sys.executable, "-m", "experiments.route", f"--workdir={workdir}",
       f"--queries={path}", "--budget=0.001"],
      cwd=REPO, capture_output=True, text=True, timeout=300,
      env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert proc.returncode == 1, proc.stderr  # one bad line
  out = [json.loads(line) for line in proc.stdout.splitlines()]
  assert [r["query_id"] for r in out] == [0, 1, 2, 3, 4]
  assert f"{path}:6: bad JSON" in proc.stderr
  assert "routed 5 queries (1 failed)" in proc.stderr
