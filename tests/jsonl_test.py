"""Tests for recal_jax.data.jsonl: the user-log schema, its errors, load_table."""

import json

import numpy as np
import pytest

import recal_jax.data as data
from recal_jax.data import jsonl
from recal_jax.data import synthetic
from recal_jax.data import table as table_lib

HEADER = {"format": "recal-routing-jsonl", "version": 1, "name": "my-logs",
          "prices": {"big": {"input": 2.0, "output": 8.0}, "small": {"input": 0.1, "output": 0.4}}}


def _record(query_id="q1", query="what is 2+2", dataset="math", **extra):
  record = {"query_id": query_id, "query": query, "dataset": dataset,
            "outcomes": {"big|cot": {"score": 1.0, "cost_usd": 0.01}}}
  record.update(extra)
  return record


def _write(tmp_path, lines, name="logs.jsonl"):
  path = tmp_path / name
  path.write_text("\n".join(l if isinstance(l, str) else json.dumps(l) for l in lines) + "\n")
  return path


def test_synthetic_round_trip(tmp_path):
  original = synthetic.make_synthetic(300, seed=2)
  jsonl.dump_jsonl(original, tmp_path / "syn.jsonl")
  loaded = jsonl.load_jsonl(tmp_path / "syn.jsonl")
  assert loaded.fingerprint() == original.fingerprint()
  for field in ("score", "format_ok", "cost", "tokens", "outcome_mask", "split",
                "dataset_ids", "input_price", "output_price"):
    np.testing.assert_array_equal(getattr(loaded, field), getattr(original, field))
  assert list(loaded.texts) == list(original.texts)
  assert list(loaded.query_ids) == list(original.query_ids)
  assert loaded.arm_names == original.arm_names
  assert loaded.dataset_names == original.dataset_names
  assert loaded.features.shape == (300, 0) and loaded.featurizer == "none"
  assert not loaded.cost_is_estimated


def test_handwritten_file(tmp_path):
  lines = [
      HEADER,
      "",  # blank lines are skipped
      {"query_id": "a", "query": "2+2?", "dataset": "math", "split": "test",
       "outcomes": {"big|cot": {"score": 1, "cost_usd": 0.02, "completion_tokens": 300},
                    "small": {"score": 0.0, "format_ok": False, "prompt_tokens": 100,
                              "completion_tokens": 10}}},
      {"query_id": 7, "query": "capital of France?", "dataset": "trivia", "meta": {"x": 1},
       "outcomes": [{"model": "small", "score": 0.5, "cost_usd": 0.0001, "meta": "kept out"}]},
      {"query_id": "c", "query": "2+2?", "dataset": "math",
       "outcomes": [{"model": "big", "strategy": "cot", "score": 0.0, "format_ok": 1,
                     "cost_usd": 0.03}]},
  ]
  table = jsonl.load_jsonl(_write(tmp_path, lines))
  assert table.name == "my-logs"
  assert list(table.query_ids) == ["a", "7", "c"]
  assert table.dataset_names == ("math", "trivia")
  assert table.arm_names == ("big|cot", "small|direct")
  np.testing.assert_array_equal(table.outcome_mask, [[1, 1], [0, 1], [1, 0]])
  np.testing.assert_allclose(table.score, [[1, 0], [0, 0.5], [0, 0]])
  np.testing.assert_array_equal(table.format_ok, [[1, 0], [0, 1], [1, 0]])
  # small|direct on "a" has no cost_usd: 100 * 0.1 / 1e6 + 10 * 0.4 / 1e6.
  np.testing.assert_allclose(table.cost, [[0.02, 1.4e-5], [0, 1e-4], [0.03, 0]], rtol=1e-6)
  np.testing.assert_allclose(table.tokens, [[300, 10], [0, 0], [0, 0]])
  assert table.cost_is_estimated
  np.testing.assert_allclose(table.input_price, [2.0, 0.1])
  np.testing.assert_allclose(table.output_price, [8.0, 0.4])
  # "c" repeats the text of "a", which is explicitly in test: it follows.
  assert table.split[0] == table.split[2] == table_lib.TEST


def test_fixed_arms_datasets_and_price_side_file(tmp_path):
  prices = tmp_path / "prices.json"
  prices.write_text(json.dumps({"big": {"input": 3.0, "output": 9.0}}))
  lines = [_record("a", outcomes={"big": {"score": 1, "prompt_tokens": 10,
                                          "completion_tokens": 20}})]
  table = jsonl.load_jsonl(_write(tmp_path, lines), arms=["small|cot", "big"],
                           datasets=["other", "math"], prices=prices)
  assert table.arm_names == ("small|cot", "big|direct")
  assert table.dataset_names == ("other", "math") and table.dataset_ids.tolist() == [1]
  np.testing.assert_allclose(table.cost[0, 1], (10 * 3.0 + 20 * 9.0) / 1e6)
  assert table.outcome_mask.tolist() == [[False, True]]
  np.testing.assert_allclose(table.input_price, [0.0, 3.0])  # unpriced arm: 0


def test_missing_splits_are_stratified(tmp_path):
  lines = [_record(f"q{i}", query=f"question {i}", dataset=("a", "b")[i % 2]) for i in range(200)]
  path = _write(tmp_path, lines)
  table = jsonl.load_jsonl(path, seed=3)
  for d in range(2):
    fractions = np.bincount(table.split[table.dataset_ids == d], minlength=3) / 100
    np.testing.assert_allclose(fractions, (0.7, 0.1, 0.2))
  np.testing.assert_array_equal(jsonl.load_jsonl(path, seed=3).split, table.split)
  assert not np.array_equal(jsonl.load_jsonl(path, seed=4).split, table.split)


def test_load_table_dispatch(tmp_path):
  path = _write(tmp_path, [_record("a"), _record("b", query="other words")])
  table = data.load_table(f"jsonl:{path}")
  assert table.featurizer.startswith("hashing-v1:dim=512") and table.features.shape == (2, 512)
  table = data.load_table(f"jsonl:{path}", featurizer="hashing-v1:dim=8")
  assert table.features.shape == (2, 8)
  assert data.load_table("synthetic", num_queries=50).featurizer == "synthetic-latent"
  assert data.load_table("synthetic", num_queries=50, featurizer="hashing").feature_dim == 512
  with pytest.raises(ValueError, match="unknown routing table"):
    data.load_table("nope")


def _outcome(**fields):
  return {"outcomes": {"big|cot": fields}}


# (lines after a good first record, line number of the error, field named)
MALFORMED = {
    "bad_json": (['{"query_id": "b", "query": '], 2, None),
    "not_an_object": (["[1, 2]"], 2, None),
    "missing_query_id": ([{"query": "x", "dataset": "math", "outcomes": {}}], 2, "query_id"),
    "missing_query": ([{"query_id": "b", "dataset": "math", "outcomes": {}}], 2, "query"),
    "missing_outcomes": ([{"query_id": "b", "query": "x", "dataset": "math"}], 2, "outcomes"),
    "missing_score": ([_record("b", **_outcome(cost_usd=0.1))], 2, "outcomes.big|cot.score"),
    "score_above_one": ([_record("b", **_outcome(score=1.5, cost_usd=0.1))], 2,
                        "outcomes.big|cot.score"),
    "score_negative": ([_record("b", **_outcome(score=-0.1, cost_usd=0.1))], 2,
                       "outcomes.big|cot.score"),
    "score_string": ([_record("b", **_outcome(score="1", cost_usd=0.1))], 2,
                     "outcomes.big|cot.score"),
    "score_bool": ([_record("b", **_outcome(score=True, cost_usd=0.1))], 2,
                   "outcomes.big|cot.score"),
    "format_ok_string": ([_record("b", **_outcome(score=1, format_ok="yes", cost_usd=0.1))], 2,
                         "outcomes.big|cot.format_ok"),
    "negative_cost": ([_record("b", **_outcome(score=1, cost_usd=-1))], 2,
                      "outcomes.big|cot.cost_usd"),
    "no_cost_no_tokens": ([_record("b", **_outcome(score=1))], 2, "outcomes.big|cot.cost_usd"),
    "fractional_prompt_tokens": ([_record("b", **_outcome(score=1, prompt_tokens=1.5,
                                                          completion_tokens=3))], 2,
                                 "outcomes.big|cot.prompt_tokens"),
    "typo_field": ([_record("b", **_outcome(score=1, cost_usd=0.1, fromat_ok=True))], 2,
                   "outcomes.big|cot.fromat_ok"),
    "unknown_record_field": ([_record("b", answer="4")], 2, "answer"),
    "query_not_string": ([_record("b", query=42)], 2, "query"),
    "query_id_float": ([_record(1.5)], 2, "query_id"),
    "dataset_not_string": ([_record("b", dataset=["math"])], 2, "dataset"),
    "duplicate_id": ([_record("b"), _record("q1")], 3, "query_id"),
    "no_outcome": ([_record("b", outcomes={})], 2, "outcomes"),
    "outcomes_wrong_type": ([_record("b", outcomes="big")], 2, "outcomes"),
    "bad_split": ([_record("b", split="dev")], 2, "split"),
    "bad_arm_key": ([_record("b", outcomes={"|cot": {"score": 1, "cost_usd": 0}})], 2,
                    "outcomes.|cot"),
    "list_entry_without_model": ([_record("b", outcomes=[{"score": 1, "cost_usd": 0}])], 2,
                                 "outcomes[0].model"),
    "arm_twice": ([_record("b", outcomes=[{"model": "m", "score": 1, "cost_usd": 0},
                                          {"model": "m", "strategy": "direct", "score": 0,
                                           "cost_usd": 0}])], 2, "outcomes[1]"),
    "late_header": ([HEADER], 2, "format"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_lines_name_file_line_and_field(tmp_path, case):
  lines, line_number, field = MALFORMED[case]
  path = _write(tmp_path, [_record("q1")] + lines)
  with pytest.raises(table_lib.RoutingDataError) as error:
    jsonl.load_jsonl(path)
  message = str(error.value)
  assert message.startswith(f"{path}:{line_number}: "), message
  if field is not None:
    assert f"field {field!r}" in message, message
  if case == "bad_json":
    assert "invalid JSON" in message and "column 28" in message, message


def test_duplicate_id_names_the_first_line(tmp_path):
  path = _write(tmp_path, [_record("a"), _record("b"), _record("a")])
  with pytest.raises(table_lib.RoutingDataError, match=r":3: field 'query_id': duplicate id "
                     r"'a' \(first on line 1\)"):
    jsonl.load_jsonl(path)


def test_unknown_dataset_and_arm(tmp_path):
  path = _write(tmp_path, [_record("a"), _record("b", dataset="poetry")])
  with pytest.raises(table_lib.RoutingDataError,
                     match=rf"{path}:2: field 'dataset': unknown dataset 'poetry'"):
    jsonl.load_jsonl(path, datasets=["math"])
  with pytest.raises(table_lib.RoutingDataError,
                     match=rf"{path}:1: field 'outcomes.big\|cot': unknown arm 'big\|cot'"):
    jsonl.load_jsonl(path, arms=["small|cot"])
  header = dict(HEADER, arms=["small|direct"])
  path = _write(tmp_path, [header, _record("a")], name="with_header.jsonl")
  with pytest.raises(table_lib.RoutingDataError, match=r":2: field 'outcomes.big\|cot'"):
    jsonl.load_jsonl(path)


def test_model_without_price(tmp_path):
  record = _record("a", outcomes={"mystery": {"score": 1, "prompt_tokens": 1,
                                              "completion_tokens": 1}})
  path = _write(tmp_path, [HEADER, record])
  with pytest.raises(table_lib.RoutingDataError,
                     match=r":2: field 'outcomes.mystery.cost_usd': missing, and model "
                     r"'mystery' has no price"):
    jsonl.load_jsonl(path)


def test_bad_header(tmp_path):
  cases = [({"format": "csv"}, "format"), (dict(HEADER, version=2), "version"),
           (dict(HEADER, prices={"big": {"input": -1, "output": 1}}), "prices.big.input"),
           (dict(HEADER, colour="red"), "colour")]
  for header, field in cases:
    path = _write(tmp_path, [header, _record("a")])
    with pytest.raises(table_lib.RoutingDataError, match=rf"{path}:1: field '{field}'"):
      jsonl.load_jsonl(path)


def test_empty_and_missing_files(tmp_path):
  path = _write(tmp_path, ["", "  "])
  with pytest.raises(table_lib.RoutingDataError, match="no query records"):
    jsonl.load_jsonl(path)
  with pytest.raises(table_lib.RoutingDataError, match="cannot open"):
    jsonl.load_jsonl(tmp_path / "absent.jsonl")


def test_tfds_builder_round_trip(tmp_path):
  original = synthetic.make_synthetic(120, seed=5)
  path = tmp_path / "syn.jsonl"
  jsonl.dump_jsonl(original, path)
  direct = jsonl.load_jsonl(path, seed=5)
  via_tfds = jsonl.load_jsonl_tfds(path, data_dir=tmp_path / "tfds", seed=5)
  assert via_tfds.fingerprint() == direct.fingerprint()
  assert via_tfds.describe() == direct.describe()
  assert list(via_tfds.texts) == list(direct.texts)
  for field in ("tokens", "split", "dataset_ids", "format_ok", "outcome_mask"):
    np.testing.assert_array_equal(getattr(via_tfds, field), getattr(direct, field))
  assert via_tfds.arm_strategies == direct.arm_strategies
  # A changed file is built into a new config directory, never read stale.
  first = jsonl.jsonl_builder(path, data_dir=tmp_path / "tfds", seed=5)
  jsonl.dump_jsonl(original.take(np.arange(100)), path)
  second = jsonl.jsonl_builder(path, data_dir=tmp_path / "tfds", seed=5)
  assert first.builder_config.name != second.builder_config.name
  assert jsonl.load_jsonl_tfds(path, data_dir=tmp_path / "tfds", seed=5).num_queries == 100
