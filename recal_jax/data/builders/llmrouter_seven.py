"""LLMRouter logs, seven-dataset benchmark: 3,723 queries x 9 models.

Source: `llmrouter/` of the routing_data folder (github.com/ulab-uiuc/LLMRouter,
MIT): `train.json` (5,608) and `test.json` (500) records `{question,
scores{9 models}, cluster_id}` (`cluster_id` is not used); `default_llm.json`
model cards with prices; `default_query_{train,test}.jsonl` query records with
`task_name`.

* Task label: the exact question text is looked up in
  `default_query_train.jsonl` then `default_query_test.jsonl`; where a text
  is listed twice the LAST listing wins. Six texts of the train query file
  appear under two tasks (MMLU copies of four OpenBookQA and two ARC items,
  listed first as mmlu): with last-wins they keep their original benchmark,
  so the four OpenBookQA items leave the seven-dataset set.
* Only natural_qa, trivia_qa, mmlu, gsm8k, mbpp, arc_challenge and
  commonsense_qa are kept (never gpqa).
* De-duplication by exact text: 119 test questions also appear in train (19
  of them in the seven datasets, 4 of those with different scores); the FIRST
  outcome row wins (train.json before test.json, file order).
* The queries are re-split 70/10/20 with `stratified_split` (seed, by task).
* Arms: the 9 models that have scores, each with strategy 'direct'.
* score = the logged score (in [0, 1]); format_ok = 1 everywhere: the logs
  hold no responses, so no answer format can be checked; tokens = 0 (unknown).
* Cost is ESTIMATED (there are no token counts): prompt tokens =
  ceil(len(text) / 4) + a per-dataset prompt-template overhead, completion
  tokens = a per-dataset output length, both calibrated on the exact token
  counts that RouteProfile logged for the same seven tasks (mean over its 8
  models: prompt_tokens - ceil(len(query) / 4), and completion_tokens);
  prices (USD per million tokens) from `default_llm.json`.
"""

from __future__ import annotations

import os

import numpy as np

from recal_jax.data.builders import _common as c
from recal_jax.data.builders import _tfds_base
from recal_jax.data.table import RoutingDataError, RoutingTable, dedupe_by_text

NAME = "llmrouter_seven"
OUTCOME_FILES = ("train.json", "test.json")
QUERY_FILES = ("default_query_train.jsonl", "default_query_test.jsonl")
PRICES_FILE = "default_llm.json"

# Arm order (the order of default_llm.json, restricted to models with scores).
MODELS = (
    "qwen2.5-7b-instruct",
    "codegemma-7b",
    "gemma-2-9b-it",
    "llama-3.1-8b-instruct",
    "llama3-chatqa-1.5-8b",
    "mistral-7b-instruct-v0.3",
    "llama-3.3-nemotron-super-49b-v1",
    "llama-3.1-nemotron-51b-instruct",
    "llama3-chatqa-1.5-70b",
)

DATASET_NAMES = ("natural_qa", "trivia_qa", "mmlu", "gsm8k", "mbpp", "arc_challenge",
                 "commonsense_qa")

# All task names of the LLMRouter query files; any other is an error.
KNOWN_TASKS = DATASET_NAMES + ("math", "openbook_qa", "gpqa", "agentverse-mgsm",
                               "human_eval", "agentverse-logicgrid", "commongen")

# Per dataset: (prompt-template overhead tokens, completion tokens), calibrated
# on routeprofile/routing_test_data.json (exact counts, mean over 8 models x 50
# queries): overhead = mean(prompt_tokens) - mean(ceil(len(query) / 4)).
TOKEN_ESTIMATES = {
    "natural_qa": (39, 134),
    "trivia_qa": (40, 70),
    "mmlu": (94, 92),
    "gsm8k": (31, 258),
    "mbpp": (138, 56),
    "arc_challenge": (82, 65),
    "commonsense_qa": (76, 35),
}

DESCRIPTION = (
    "LLMRouter logs (github.com/ulab-uiuc/LLMRouter, MIT), seven-dataset benchmark "
    "(natural_qa, trivia_qa, mmlu, gsm8k, mbpp, arc_challenge, commonsense_qa): train+test "
    "outcome rows joined to their task by exact text (last listing wins), de-duplicated "
    "by text (first row wins), re-split 70/10/20 stratified by task; 9 models, strategy "
    "'direct'. COST IS ESTIMATED: no token counts are logged, so prompt tokens = "
    "ceil(len(text)/4) + a per-dataset template overhead and completion tokens = a "
    "per-dataset mean, both calibrated on RouteProfile's exact counts, times "
    "default_llm.json prices. format_ok = 1 (no responses logged); tokens = 0 (unknown).")


def _load_task_labels(folder: str) -> dict[str, str]:
  """Exact query text -> task name (last listing wins), validating task names."""
  labels = {}
  for name in QUERY_FILES:
    path = os.path.join(folder, name)
    for lineno, obj in c.read_jsonl(path):
      loc = c.where(path, f"line {lineno}")
      text = c.require_str(obj, "query", loc)
      task = c.require_str(obj, "task_name", loc)
      if task not in KNOWN_TASKS:
        raise RoutingDataError(
            f"{loc}: field 'task_name' is {task!r}, an unknown dataset name "
            f"(known: {', '.join(KNOWN_TASKS)})")
      labels[text] = task
  return labels


def parse_llmrouter_seven(folder: str | os.PathLike, *, seed: int = 0,
                          models: tuple[str, ...] = MODELS) -> RoutingTable:
  """Parses the `llmrouter/` folder into the seven-dataset `RoutingTable`.

  Args:
    folder: the `llmrouter/` folder.
    seed: seed of the stratified train/validation/test split.
    models: the arms, in order; every outcome row must score exactly these.

  Raises:
    RoutingDataError: naming the file, the record / line and the field, for
      bad JSON, a missing / unexpected model, a score outside [0, 1], an
      unknown task name, a question absent from the query files, ...
  """
  folder = os.fspath(folder)
  input_price, output_price = c.load_prices(os.path.join(folder, PRICES_FILE), models)
  task_of = _load_task_labels(folder)

  query_ids, texts, tasks, scores = [], [], [], []
  for name in OUTCOME_FILES:
    path = os.path.join(folder, name)
    records = c.read_json(path)
    if not isinstance(records, list):
      raise RoutingDataError(f"{path}: expected a JSON list of records")
    for i, record in enumerate(records):
      loc = c.where(path, f"record {i}")
      text = c.require_str(record, "question", loc)
      row = c.require(record, "scores", loc)
      if not isinstance(row, dict):
        raise RoutingDataError(f"{loc}: field 'scores' must be an object")
      unexpected = sorted(set(row) - set(models))
      if unexpected:
        raise RoutingDataError(f"{loc}: field 'scores' has unexpected model {unexpected[0]!r}")
      values = []
      for model in models:
        if model not in row:
          raise RoutingDataError(f"{loc}: field 'scores' is missing model {model!r}")
        values.append(c.as_score(row[model], f"scores.{model}", loc))
      if text not in task_of:
        raise RoutingDataError(
            f"{loc}: field 'question' ({text[:60]!r}...) is in none of {', '.join(QUERY_FILES)}")
      if task_of[text] not in DATASET_NAMES:
        continue
      query_ids.append(f"{os.path.splitext(name)[0]}:{i}")
      texts.append(text)
      tasks.append(task_of[text])
      scores.append(values)

  if not texts:
    raise RoutingDataError(f"{folder}: no outcome row belongs to the seven datasets")
  keep = dedupe_by_text(texts)
  query_ids = [query_ids[k] for k in keep]
  texts = [texts[k] for k in keep]
  tasks = [tasks[k] for k in keep]
  score = np.asarray(scores, np.float64)[keep]

  prompt_tokens = np.asarray(
      [c.estimate_tokens(t) + TOKEN_ESTIMATES[d][0] for t, d in zip(texts, tasks)], np.float64)
  completion_tokens = np.asarray([TOKEN_ESTIMATES[d][1] for d in tasks], np.float64)
  cost = c.call_cost(prompt_tokens[:, None], completion_tokens[:, None],
                     input_price.astype(np.float64)[None], output_price.astype(np.float64)[None])
  shape = score.shape
  return c.assemble_table(
      name=NAME, query_ids=query_ids, texts=texts, dataset_names=DATASET_NAMES,
      dataset_ids=[DATASET_NAMES.index(d) for d in tasks], arm_models=models,
      input_price=input_price, output_price=output_price, score=score,
      format_ok=np.ones(shape), cost=cost, tokens=np.zeros(shape),
      outcome_mask=np.ones(shape, bool), seed=seed, description=DESCRIPTION,
      cost_is_estimated=True)


class LlmrouterSeven(_tfds_base.RoutingLogBuilder):
  """TFDS builder for the LLMRouter seven-dataset logs (manual dir = routing_data)."""

  name = NAME
  SUBDIR = "llmrouter"
  MODELS = MODELS
  DATASET_NAMES = DATASET_NAMES
  HOMEPAGE = "https://github.com/ulab-uiuc/LLMRouter"
  DESCRIPTION = DESCRIPTION
  PARSER = staticmethod(parse_llmrouter_seven)
