"""Holes in a user's log (`null` scores): loaded as masked, never sampled, not format failures."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from recal_jax import evaluate
from recal_jax import policies
from recal_jax import rollout
from recal_jax.data import jsonl
from recal_jax.data import table as table_lib


def _write(tmp_path, records):
  path = tmp_path / "holes.jsonl"
  path.write_text("".join(json.dumps(r) + "\n" for r in records))
  return str(path)


def _record(i, outcomes, dataset="math"):
  return {"query_id": f"q{i}", "query": f"question {i}", "dataset": dataset, "outcomes": outcomes}


def test_null_scores_are_arms_not_run(tmp_path):
  path = _write(tmp_path, [
      _record(0, {"big": {"score": 1.0, "cost_usd": 0.01}, "small": {"score": None}}),
      _record(1, {"big": None, "small": {"score": 0.0, "cost_usd": 0.001}}),
      _record(2, [{"model": "big", "score": 0.5, "cost_usd": 0.02},
                  {"model": "small", "score": None, "meta": "timed out"}]),
  ])
  table = jsonl.load_jsonl(path)
  assert table.arm_names == ("big|direct", "small|direct")
  np.testing.assert_array_equal(table.outcome_mask, [[True, False], [False, True], [True, False]])
  assert table.score[0, 1] == 0 and table.score[1, 0] == 0


@pytest.mark.parametrize("outcomes,field", [
    ({"big": {"score": None, "cost_usd": 0.1}}, "outcomes.big.cost_usd"),
    ({"big": None, "small": {"score": None}}, "outcomes"),
])
def test_null_score_mistakes_name_the_field(tmp_path, outcomes, field):
  path = _write(tmp_path, [_record(0, {"big": {"score": 1.0, "cost_usd": 0.01}}),
                           _record(1, outcomes)])
  with pytest.raises(table_lib.RoutingDataError, match=rf"{path}:2: field '{field}'"):
    jsonl.load_jsonl(path)


def test_arms_not_run_are_never_sampled_and_the_first_ratio_is_one():
  from recal_jax.data import synthetic  # pylint: disable=import-outside-toplevel
  import dataclasses  # pylint: disable=import-outside-toplevel
  base = synthetic.make_synthetic(64, seed=0, feature_dim=8)
  mask = np.random.default_rng(0).random(base.outcome_mask.shape) < 0.3
  mask[np.arange(64), np.arange(64) % base.num_arms] = True  # >= 1 arm per query
  table = dataclasses.replace(base, outcome_mask=mask).validate()
  device = rollout.device_table(table)
  policy = policies.CategoricalPolicy(table.num_arms, hidden_dims=(16,), embedding_dim=8)
  params = policy.init(jax.random.key(0), table.feature_dim)
  queries = jnp.arange(64, dtype=jnp.int32)
  batch = jax.jit(lambda p, r: rollout.sample_rollouts(
      policy, p, device, queries, r, group_size=16, cost_scale=0.01))(params, jax.random.key(1))
  arms, rows = np.asarray(batch.arm_indices), np.asarray(batch.query_indices)
  assert mask[rows, arms].all()  # never an arm that was not run
  assert np.asarray(batch.mask).all()  # so no rollout is wasted
  new_log_probs, _ = policy.log_probs_and_entropy(params, batch.features, batch.tokens)
  np.testing.assert_allclose(new_log_probs, batch.old_log_probs, rtol=1e-6, atol=1e-6)
  greedy = policy.greedy(params, table.features, arm_mask=mask).arm_indices
  assert mask[np.arange(64), np.asarray(greedy)].all()
  # A row with no available arm is left unmasked rather than made impossible.
  logits = policies.available_logits(jnp.zeros((1, 3)), jnp.zeros((1, 3), bool))
  assert np.isfinite(np.asarray(logits)).all()


def test_an_arm_not_run_is_not_a_format_failure(tmp_path):
  path = _write(tmp_path, [
      _record(0, {"big": {"score": 1.0, "cost_usd": 0.01}, "small": {"score": None}}),
      _record(1, {"big": {"score": 1.0, "cost_usd": 0.01, "format_ok": False},
                  "small": {"score": 0.0, "cost_usd": 0.001}}),
  ])
  table = jsonl.load_jsonl(path)
  m = evaluate.route_metrics(table, [1, 0])  # q0 -> 'small', which was not run on q0
  assert m["unlogged_choices"] == 1
  assert m["format_ok_rate"] == 0.0  # q1's real failure only; q0 is not counted
  m = evaluate.route_metrics(table, [1, 1])
  assert m["format_ok_rate"] == 1.0
