"""Tests for the real-log parsers, TFDS builders and `load_real_table`.

Tests on the real logs skip when `../shared/routing_data` (or
$RECAL_ROUTING_DATA) is absent; the malformed-input, format-check and small
TFDS round-trip tests write tiny logs into tmp_path and always run.
"""

from __future__ import annotations

import collections
import json
import os

import numpy as np
import pytest

from recal_jax.data import real
from recal_jax.data.builders import _common as c
from recal_jax.data.builders import llmrouter_seven as lr
from recal_jax.data.builders import routellm as rl
from recal_jax.data.builders import routeprofile as rp
from recal_jax.data.table import RoutingDataError, RoutingTable

ROUTING_DATA = real.default_manual_dir()
NAMES = real.REAL_TABLE_NAMES
SEVEN = {"natural_qa", "trivia_qa", "mmlu", "gsm8k", "mbpp", "arc_challenge",
         "commonsense_qa"}


def _require_real_data():
  if not os.path.isdir(ROUTING_DATA):
    pytest.skip(f"../shared/routing_data not found: {ROUTING_DATA} "
                f"(set {real.MANUAL_DIR_ENV} to the routing_data folder)")


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
  """name -> (table from the parser, table built and read back through TFDS)."""
  _require_real_data()
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  cache = {}

  def get(name):
    if name not in cache:
      direct = real.load_real_table(name, manual_dir=ROUTING_DATA, use_tfds=False)
      via_tfds = real.load_real_table(name, manual_dir=ROUTING_DATA, data_dir=data_dir)
      cache[name] = (direct, via_tfds)
    return cache[name]

  return get


def _assert_same_table(a: RoutingTable, b: RoutingTable):
  assert a.describe() == b.describe()
  for field in ("query_ids", "texts", "features", "dataset_ids", "input_price",
                "output_price", "score", "format_ok", "cost", "tokens",
                "outcome_mask", "split"):
    x, y = getattr(a, field), getattr(b, field)
    assert x.shape == y.shape and x.dtype == y.dtype, field
    assert np.array_equal(x, y), field
  for field in ("name", "dataset_names", "arm_models", "arm_strategies",
                "featurizer", "description", "cost_is_estimated"):
    assert getattr(a, field) == getattr(b, field), field


# ------------------------------------------------------------ real logs
def test_routeprofile_counts_and_baselines(tables):
  table, _ = tables("routeprofile")
  assert (table.num_queries, table.num_arms, table.num_datasets) == (600, 8, 12)
  assert set(collections.Counter(table.dataset_ids.tolist()).values()) == {50}
  assert table.feature_dim == 0 and table.featurizer == "none"
  assert set(table.arm_strategies) == {"direct"}
  assert round(float(table.mean_arm_score().max()), 3) == 0.612
  assert round(table.oracle_score(), 3) == 0.757
  assert not table.cost_is_estimated


def test_routeprofile_cost_is_exact(tables):
  table, _ = tables("routeprofile")
  folder = os.path.join(ROUTING_DATA, "routeprofile")
  with open(os.path.join(folder, "routing_test_data.json")) as f:
    records = json.load(f)
  with open(os.path.join(folder, "candidate_models.json")) as f:
    cards = json.load(f)
  for i in (0, 123, 599):
    for j, model in enumerate(table.arm_models):
      perf = records[i]["model_performance"][model]
      want = (perf["prompt_tokens"] * cards[model]["input_price"] +
              perf["completion_tokens"] * cards[model]["output_price"]) / 1e6
      assert table.cost[i, j] == pytest.approx(want, rel=1e-6)
      assert table.tokens[i, j] == perf["completion_tokens"]


def test_routeprofile_format_ok_rates_are_plausible(tables):
  table, _ = tables("routeprofile")
  rates = c.format_ok_rates(table)
  print("\nrouteprofile format_ok by dataset:",
        {k: round(v, 3) for k, v in rates.items()})
  print("routeprofile format_ok by arm:",
        dict(zip(table.arm_models, table.format_ok.mean(0).round(3))))
  for name, rate in rates.items():
    low = 0.5 if name == "agentverse-logicgrid" else 0.9
    assert low <= rate <= 1.0, (name, rate)
  assert rates["natural_qa"] == rates["commongen"] == 1.0
  assert 0.0 < table.format_ok.mean() < 1.0


def test_llmrouter_seven_counts_and_baselines(tables):
  table, _ = tables("llmrouter_seven")
  assert (table.num_queries, table.num_arms) == (3723, 9)
  assert set(table.dataset_names) == SEVEN and "gpqa" not in table.dataset_names
  assert set(table.dataset_ids.tolist()) == set(range(7))
  assert len(set(table.texts.tolist())) == 3723
  best = table.best_single_arm()
  assert table.arm_models[best] == "llama-3.1-nemotron-51b-instruct"
  assert round(float(table.mean_arm_score()[best]), 3) == 0.670
  assert round(table.oracle_score(), 3) == 0.806
  assert table.cost_is_estimated and "ESTIMATED" in table.description
  assert (table.format_ok == 1).all() and (table.tokens == 0).all()
  assert (table.cost > 0).all()


def test_routellm_counts_after_contamination_drop(tables):
  table, _ = tables("routellm")
  folder = os.path.join(ROUTING_DATA, "routellm")
  assert table.arm_models == (rl.MIXTRAL, rl.GPT4)
  counts = collections.Counter(table.dataset_names[d] for d in table.dataset_ids)
  assert counts == {"mmlu": 13932, "gsm8k": 1307}
  subjects = {q.split(":")[0] for q in table.query_ids if q.startswith("mmlu/")}
  assert len(subjects) == 57
  texts = set(table.texts.tolist())
  for sub in ("mmlu", "gsm8k"):
    with open(os.path.join(folder, sub, "contaminated_prompts.jsonl")) as f:
      dropped = [json.loads(line)["eval_prompt"] for line in f if line.strip()]
    assert dropped and not texts & set(dropped)
  assert table.arm_models[table.best_single_arm()] == rl.GPT4
  gsm = table.dataset_ids == 1
  assert 0.95 < table.format_ok[gsm].mean() <= 1.0
  assert (table.format_ok[~gsm] == 1).all()
  assert table.cost_is_estimated
  assert (table.cost[:, 1] > table.cost[:, 0]).all()  # GPT-4 costs more.


@pytest.mark.parametrize("name", NAMES)
def test_tfds_path_gives_the_parser_table(tables, name):
  direct, via_tfds = tables(name)
  _assert_same_table(direct, via_tfds)


@pytest.mark.parametrize("name", NAMES)
def test_splits_are_stratified_and_leak_free(tables, name):
  table, _ = tables(name)
  split_of = {}
  for text, split in zip(table.texts, table.split):
    assert split_of.setdefault(text, split) == split
  for d in range(table.num_datasets):
    frac = np.bincount(table.split[table.dataset_ids == d], minlength=3) / (
        table.dataset_ids == d).sum()
    np.testing.assert_allclose(frac, [0.7, 0.1, 0.2], atol=0.03)


def test_seed_changes_only_the_split(tables, tmp_path):
  base, _ = tables("routeprofile")
  other = real.load_real_table("routeprofile", manual_dir=ROUTING_DATA,
                               data_dir=str(tmp_path), seed=1)
  assert not np.array_equal(base.split, other.split)
  assert np.array_equal(base.score, other.score)
  assert np.array_equal(other.split, real.load_real_table(
      "routeprofile", manual_dir=ROUTING_DATA, seed=1, use_tfds=False).split)


# -------------------------------------------------------- tiny test logs
def _outcome(score=1.0, response="(A)", prompt_tokens=10, completion_tokens=2):
  return {"response": response, "prompt_tokens": prompt_tokens,
          "completion_tokens": completion_tokens, "success": True,
          "task_performance": score}


def _write_routeprofile(folder, records=None, cards=None):
  os.makedirs(folder, exist_ok=True)
  if cards is None:
    cards = {m: {"input_price": 0.1 * (k + 1), "output_price": 0.2 * (k + 1)}
             for k, m in enumerate(rp.MODELS)}
  if records is None:
    records = []
    for k in range(6):
      task = ("mmlu", "gsm8k")[k % 2]
      records.append({
          "task_name": task, "query": f"question {k}?", "ground_truth": "A",
          "metric": "em_mc" if task == "mmlu" else "gsm8k",
          "choices": "['x', 'y', 'z', 'w']" if task == "mmlu" else None,
          "task_id": None,
          "model_performance": {m: _outcome(response="(B)" if task == "mmlu" else "#### 4")
                                for m in rp.MODELS}})
    records[0]["model_performance"] = repr(records[0]["model_performance"])
  with open(os.path.join(folder, "routing_test_data.json"), "w") as f:
    f.write(records if isinstance(records, str) else json.dumps(records, indent=1))
  with open(os.path.join(folder, "candidate_models.json"), "w") as f:
    json.dump(cards, f)
  return folder


def _write_llmrouter(folder, train=None, queries=None):
  os.makedirs(folder, exist_ok=True)
  if train is None:
    train = [{"question": f"q{k}", "scores": {m: 0.5 for m in lr.MODELS}, "cluster_id": 0}
             for k in range(4)]
  if queries is None:
    queries = [{"task_name": ("mmlu", "gpqa")[k % 2], "query": f"q{k}"} for k in range(4)]
  with open(os.path.join(folder, "train.json"), "w") as f:
    f.write(train if isinstance(train, str) else json.dumps(train))
  with open(os.path.join(folder, "test.json"), "w") as f:
    json.dump([{"question": "q0", "scores": {m: 0.0 for m in lr.MODELS}}], f)
  with open(os.path.join(folder, "default_query_train.jsonl"), "w") as f:
    f.write(queries if isinstance(queries, str) else
            "".join(json.dumps(q) + "\n" for q in queries))
  with open(os.path.join(folder, "default_query_test.jsonl"), "w") as f:
    f.write("")
  with open(os.path.join(folder, "default_llm.json"), "w") as f:
    json.dump({m: {"input_price": 0.2, "output_price": 0.4} for m in lr.MODELS}, f)
  return folder


def _write_routellm(folder, mmlu_rows=None):
  os.makedirs(os.path.join(folder, "mmlu", "responses"), exist_ok=True)
  os.makedirs(os.path.join(folder, "gsm8k"), exist_ok=True)
  header = f"prompt,{rl.MIXTRAL},{rl.GPT4}\n"
  if mmlu_rows is None:
    mmlu_rows = '"What is 1+1?\nA. 2\nAnswer:",True,True\n"Dropped?",False,True\n'
  with open(os.path.join(folder, "mmlu", "responses", "mmlu_math.csv"), "w") as f:
    f.write(mmlu_rows if mmlu_rows.startswith("prompt") else header + mmlu_rows)
  with open(os.path.join(folder, "mmlu", "contaminated_prompts.jsonl"), "w") as f:
    f.write(json.dumps({"train_prompt": "x", "eval_prompt": "Dropped?"}) + "\n")
  with open(os.path.join(folder, "gsm8k", "gsm8k_responses.csv"), "w") as f:
    f.write(f"prompt,{rl.MIXTRAL},{rl.GPT4},{rl.MIXTRAL}_response,{rl.GPT4}_response\n"
            '"Tom has 2+2 apples?",False,True,"I do not know.","2 + 2 = 4.\n#### 4"\n')
  with open(os.path.join(folder, "gsm8k", "contaminated_prompts.jsonl"), "w") as f:
    f.write("")
  return folder


def _raises(fn, *fragments):
  with pytest.raises(RoutingDataError) as info:
    fn()
  message = str(info.value)
  for fragment in fragments:
    assert fragment in message, (fragment, message)
  return message


def test_tiny_logs_parse(tmp_path):
  table = rp.parse_routeprofile(_write_routeprofile(tmp_path / "rp"))
  assert (table.num_queries, table.num_arms) == (6, 8)
  assert (table.format_ok == 1).all()  # '(B)' is a valid label; '#### 4' a number.
  assert table.cost[0, 1] == pytest.approx((10 * 0.2 + 2 * 0.4) / 1e6)
  table = lr.parse_llmrouter_seven(_write_llmrouter(tmp_path / "lr"))
  assert table.num_queries == 2  # q0 (train row wins over test), q2; gpqa dropped.
  assert table.score[0, 0] == 0.5 and table.cost_is_estimated
  table = rl.parse_routellm(_write_routellm(tmp_path / "rl"))
  assert table.num_queries == 2 and table.dataset_names == ("mmlu", "gsm8k")
  np.testing.assert_array_equal(table.format_ok, [[1, 1], [0, 1]])


def test_tiny_logs_tfds_round_trip(tmp_path):
  _write_routeprofile(tmp_path / "data" / "routeprofile")
  direct = real.load_real_table("routeprofile", manual_dir=tmp_path / "data", use_tfds=False)
  via_tfds = real.load_real_table("routeprofile", manual_dir=tmp_path / "data",
                                  data_dir=tmp_path / "tfds")
  _assert_same_table(direct, via_tfds)
  assert os.path.isdir(tmp_path / "tfds" / "routeprofile" / "seed0" / "1.0.0")


def _routeprofile_records():
  records = []
  for k in range(2):
    records.append({
        "task_name": "mmlu", "query": f"q{k}", "metric": "em_mc",
        "choices": "{'text': ['a', 'b'], 'label': ['A', 'B']}",
        "model_performance": {m: _outcome() for m in rp.MODELS}})
  return records


@pytest.mark.parametrize("mutate, fragments", [
    (lambda r: "[{\"task_name\": }]", ["routing_test_data.json", "line 1", "invalid JSON"]),
    (lambda r: r[1]["model_performance"].pop(rp.MODELS[3]) and r,
     ["routing_test_data.json", "record 1", "model_performance", rp.MODELS[3]]),
    (lambda r: r[0]["model_performance"].update(gpt5=_outcome()) or r,
     ["record 0", "model_performance", "unexpected model 'gpt5'"]),
    (lambda r: r[1]["model_performance"][rp.MODELS[0]].update(task_performance=1.5) or r,
     ["record 1", f"model_performance.{rp.MODELS[0]}.task_performance", "1.5"]),
    (lambda r: r[0].update(task_name="gpqa") or r,
     ["record 0", "task_name", "unknown dataset name"]),
    (lambda r: r[1].update(choices="{'label': [__import__('os')]}") or r,
     ["record 1", "choices"]),
    (lambda r: r[0].pop("query") and r, ["record 0", "'query'"]),
    (lambda r: r[0]["model_performance"][rp.MODELS[2]].update(prompt_tokens=-3) or r,
     ["record 0", "prompt_tokens"]),
])
def test_routeprofile_malformed(tmp_path, mutate, fragments):
  records = mutate(_routeprofile_records())
  folder = _write_routeprofile(tmp_path / "rp", records=records)
  _raises(lambda: rp.parse_routeprofile(folder), *fragments)


def test_routeprofile_missing_price(tmp_path):
  cards = {m: {"input_price": 0.1, "output_price": 0.1} for m in rp.MODELS[1:]}
  folder = _write_routeprofile(tmp_path / "rp", cards=cards)
  _raises(lambda: rp.parse_routeprofile(folder), "candidate_models.json", rp.MODELS[0],
          "missing model")


def test_llmrouter_malformed(tmp_path):
  scores = {m: 0.5 for m in lr.MODELS}
  missing = dict(scores)
  del missing[lr.MODELS[4]]
  cases = [
      (dict(train='[{"question": "q0",'), ["train.json", "line 1", "invalid JSON"]),
      (dict(train=[{"question": "q0", "scores": scores}, {"question": "q1", "scores": missing}]),
       ["train.json", "record 1", "scores", lr.MODELS[4]]),
      (dict(train=[{"question": "q0", "scores": dict(scores, **{lr.MODELS[0]: -0.1})}]),
       ["train.json", "record 0", f"scores.{lr.MODELS[0]}", "outside [0, 1]"]),
      (dict(train=[{"question": "q0", "scores": dict(scores, **{lr.MODELS[0]: "1"})}]),
       ["record 0", f"scores.{lr.MODELS[0]}"]),
      (dict(queries=('{"task_name": "mmlu", "query": "q0"}\n'
                     '{"task_name": "chess", "query": "q1"}\n')),
       ["default_query_train.jsonl", "line 2", "task_name", "unknown dataset name"]),
      (dict(queries='{"task_name": "mmlu", "query": "q0"}\nnot json\n'),
       ["default_query_train.jsonl", "line 2", "invalid JSON"]),
      (dict(train=[{"question": "q9", "scores": scores}]),
       ["train.json", "record 0", "question"]),
      (dict(train=[{"scores": scores}]), ["train.json", "record 0", "'question'"]),
  ]
  for k, (kwargs, fragments) in enumerate(cases):
    folder = _write_llmrouter(tmp_path / f"lr{k}", **kwargs)
    _raises(lambda: lr.parse_llmrouter_seven(folder), *fragments)


def test_routellm_malformed(tmp_path):
  cases = [
      ('"Q1?",True,True\n"Q2?",maybe,True\n', ["mmlu_math.csv", "line 3", rl.MIXTRAL]),
      ('"Q1?\nA. x\nAnswer:",True,True\n"Q2?",True,2\n', ["mmlu_math.csv", "line 5", rl.GPT4]),
      (f"prompt,{rl.MIXTRAL}\n\"Q1?\",True\n",
       ["mmlu_math.csv", "line 1", rl.GPT4, "missing column"]),
      ('"Q1?",True\n', ["mmlu_math.csv", "line 2", "fields"]),
      ('"",True,True\n', ["mmlu_math.csv", "line 2", "'prompt'"]),
  ]
  for k, (rows, fragments) in enumerate(cases):
    folder = _write_routellm(tmp_path / f"rl{k}", mmlu_rows=rows)
    _raises(lambda: rl.parse_routellm(folder), *fragments)
  folder = _write_routellm(tmp_path / "rl_bad_jsonl")
  with open(os.path.join(folder, "gsm8k", "contaminated_prompts.jsonl"), "w") as f:
    f.write('{"eval_prompt": "a"}\n{"train_prompt": "b"}\n')
  _raises(lambda: rl.parse_routellm(folder), "contaminated_prompts.jsonl", "line 2",
          "'eval_prompt'")


def test_load_real_table_errors(tmp_path, monkeypatch):
  with pytest.raises(ValueError, match="unknown real table"):
    real.load_real_table("gpqa")
  _raises(lambda: real.load_real_table("routellm", manual_dir=tmp_path), "routellm",
          real.MANUAL_DIR_ENV)
  monkeypatch.setenv(real.MANUAL_DIR_ENV, str(tmp_path))
  assert real.default_manual_dir() == str(tmp_path)
  monkeypatch.setenv(real.DATA_DIR_ENV, str(tmp_path / "cache"))
  assert real.default_data_dir() == str(tmp_path / "cache")


# ---------------------------------------------------------- format checks
@pytest.mark.parametrize("response, ok", [
    ("C", True), ("(C)", True), ("**C.**", True), (" C. Were born after WW II", True),
    ("(C) having fun", True), ("[E, closet] is the answer", False),
    ("Reasoning...\nThe correct answer is (B).", True), ("Let me think.\n\n(D)", True),
    ("analyze each option:\nA. foo\nB. bar\nSo the answer is (D).", True),
    ("(E)", False), ("3", False), ("", False), ("I think a or b", False),
    ("Answer: C\nAnswer: D", False), ("Both (A) and (B) fit.", False),
    ("It could be (A) or maybe (B), hard to say", False),
])
def test_multiple_choice_ok(response, ok):
  assert c.multiple_choice_ok(response, ["A", "B", "C", "D"]) is ok


def test_choice_labels_forms():
  assert c.choice_labels("{'text': ['a', 'b'], 'labels': ['A', 'B']}", "x") == ["A", "B"]
  assert c.choice_labels({"text": ["a"], "label": ["1"]}, "x") == ["1"]
  assert c.choice_labels("['p', 'q', 'r']", "x") == ["A", "B", "C"]
  with pytest.raises(RoutingDataError, match="choices"):
    c.choice_labels("{'text': ['a']}", "x")


@pytest.mark.parametrize("response, allow_boxed, ok", [
    ("so 9 * 2 = 18.\n#### 18", False, True), ("The answer is $1,596.", False, True),
    ("Total: \\boxed{840}", False, True), ("\\boxed{\\frac{a}{b}}", True, True),
    ("\\boxed{\\frac{a}{b}}", False, False), ("I cannot tell without more data.", False, False),
    ("", False, False), ("First 3 + 4.\nSo it is 7", False, True),
])
def test_final_number_ok(response, allow_boxed, ok):
  assert c.final_number_ok(response, allow_boxed=allow_boxed) is ok


@pytest.mark.parametrize("response, ok", [
    ("```python\ndef f(x):\n  return x\n```", True),
    ("[BEGIN]\n    return sorted(x)\n[Done]", True),
    ("[BEGIN]\ndef f(x):\nreturn x\n[Done]", False),  # unindented body
    ("def f(x):\n    return x + 1", True),
    ("unique\\_digits = lambda x: x", False),
    ("Sorry, I cannot write code.", False),
])
def test_code_ok(response, ok):
  assert c.code_ok(response) is ok


def test_estimate_tokens():
  assert c.estimate_tokens("") == 1
  assert c.estimate_tokens("abcd") == 1
  assert c.estimate_tokens("abcde") == 2
