"""RouteProfile logs: 600 queries x 8 models x 12 tasks, exact costs.

Source: `routeprofile/routing_test_data.json` of the routing_data folder
(github.com/ulab-uiuc/RouteProfile, MIT). Each record holds `task_name`,
`query`, `metric`, `choices` and `model_performance = {model: {response,
prompt_tokens, completion_tokens, success, task_performance}}`; `choices` and
`model_performance` may be Python-repr strings (parsed with
`ast.literal_eval`, never evaluated).

* arms: the 8 models of `candidate_models.json`, each with strategy 'direct'
  (every model was called with one prompt template; no strategy varies);
* score = `task_performance` (in [0, 1]);
* cost = prompt_tokens * input_price / 1e6 + completion_tokens * output_price / 1e6
  with the prices of `candidate_models.json` (exact, not estimated);
* tokens = completion_tokens;
* format_ok is checked on each logged response by its metric
  (`_common.FORMAT_RULES`): em_mc -> exactly one valid choice label of that
  query; gsm8k -> a parseable final number; math -> a final number or a
  `\\boxed{}` answer; code_eval -> code that parses as Python; f1_score and
  commongen_coverage (free-form) -> a non-empty response;
* outcome_mask = the record's `success` flag (all True in this log);
* the 600 records (RouteProfile's test file) are re-split 70/10/20 by task
  with `stratified_split`.
"""

from __future__ import annotations

import os

import numpy as np

from recal_jax.data.builders import _common as c
from recal_jax.data.builders import _tfds_base
from recal_jax.data.table import RoutingDataError, RoutingTable

NAME = "routeprofile"
DATA_FILE = "routing_test_data.json"
PRICES_FILE = "candidate_models.json"

# Arm order (the order of candidate_models.json).
MODELS = (
    "qwen2.5-7b-instruct",
    "gemma-2-9b-it",
    "llama-3.1-8b-instruct",
    "mixtral-8x7b-instruct-v0.1",
    "mixtral-8x22b-instruct-v0.1",
    "llama-3.2-3b-instruct",
    "mistral-small-24b-instruct-2501-bf16",
    "llama-3.3-70b-instruct",
)

# Task -> metric (the order of first appearance in routing_test_data.json).
TASK_METRICS = {
    "agentverse-logicgrid": "em_mc",
    "agentverse-mgsm": "math",
    "commongen": "commongen_coverage",
    "natural_qa": "f1_score",
    "trivia_qa": "f1_score",
    "mmlu": "em_mc",
    "mbpp": "code_eval",
    "human_eval": "code_eval",
    "gsm8k": "gsm8k",
    "commonsense_qa": "em_mc",
    "openbook_qa": "em_mc",
    "arc_challenge": "em_mc",
}
DATASET_NAMES = tuple(TASK_METRICS)

DESCRIPTION = (
    "RouteProfile routing logs (github.com/ulab-uiuc/RouteProfile, MIT): 600 queries "
    "(12 tasks x 50) answered by 8 models with one prompt template (strategy 'direct'). "
    "score = task_performance; cost exact from logged prompt/completion tokens and "
    "candidate_models.json prices; format_ok checked on each response per metric "
    "(em_mc: one valid choice label; gsm8k/math: a final number or boxed answer; "
    "code_eval: code that parses as Python; f1_score/commongen: non-empty). "
    "Re-split 70/10/20 stratified by task.")


def _record_loc(path: str, index: int, record) -> str:
  task = record.get("task_name") if isinstance(record, dict) else None
  return c.where(path, f"record {index}" + (f" (task {task!r})" if task else ""))


def parse_routeprofile(folder: str | os.PathLike, *, seed: int = 0,
                       models: tuple[str, ...] = MODELS) -> RoutingTable:
  """Parses `folder/routing_test_data.json` (+ prices) into a `RoutingTable`.

  Args:
    folder: the `routeprofile/` folder.
    seed: seed of the stratified train/validation/test split.
    models: the arms, in order; every record must log exactly these models.

  Raises:
    RoutingDataError: naming the file, the record and the field, for bad JSON,
      a missing / unexpected model, a score outside [0, 1], an unknown task,
      bad choices, negative token counts, ...
  """
  folder = os.fspath(folder)
  data_path = os.path.join(folder, DATA_FILE)
  input_price, output_price = c.load_prices(os.path.join(folder, PRICES_FILE), models)
  records = c.read_json(data_path)
  if not isinstance(records, list) or not records:
    raise RoutingDataError(f"{data_path}: expected a non-empty JSON list of records")

  num_arms = len(models)
  q = len(records)
  score = np.zeros((q, num_arms), np.float64)
  format_ok = np.zeros((q, num_arms), np.float64)
  prompt_tokens = np.zeros((q, num_arms), np.float64)
  completion_tokens = np.zeros((q, num_arms), np.float64)
  mask = np.zeros((q, num_arms), bool)
  query_ids, texts, dataset_ids = [], [], []
  for i, record in enumerate(records):
    loc = _record_loc(data_path, i, record)
    task = c.require_str(record, "task_name", loc)
    if task not in TASK_METRICS:
      raise RoutingDataError(
          f"{loc}: field 'task_name' is {task!r}, an unknown dataset name "
          f"(known: {', '.join(DATASET_NAMES)})")
    metric = c.require_str(record, "metric", loc)
    if metric != TASK_METRICS[task]:
      raise RoutingDataError(
          f"{loc}: field 'metric' is {metric!r}, expected {TASK_METRICS[task]!r} for {task}")
    text = c.require_str(record, "query", loc)
    labels = c.choice_labels(c.require(record, "choices", loc), loc) if metric == "em_mc" else None
    perf = c.literal(c.require(record, "model_performance", loc), "model_performance", loc)
    if not isinstance(perf, dict):
      raise RoutingDataError(f"{loc}: field 'model_performance' must be an object")
    unexpected = sorted(set(perf) - set(models))
    if unexpected:
      raise RoutingDataError(
          f"{loc}: field 'model_performance' has unexpected model {unexpected[0]!r}")
    for j, model in enumerate(models):
      if model not in perf:
        raise RoutingDataError(f"{loc}: field 'model_performance' is missing model {model!r}")
      mloc = f"{loc}, model {model!r}"
      outcome = c.literal(perf[model], f"model_performance.{model}", loc)
      prefix = f"model_performance.{model}."
      if not isinstance(outcome, dict):
        raise RoutingDataError(f"{loc}: field {prefix[:-1]!r} must be an object")
      for field in ("task_performance", "prompt_tokens", "completion_tokens", "response"):
        if field not in outcome:
          raise RoutingDataError(f"{mloc}: missing field {prefix + field!r}")
      score[i, j] = c.as_score(outcome["task_performance"], prefix + "task_performance", mloc)
      prompt_tokens[i, j] = c.as_count(outcome["prompt_tokens"], prefix + "prompt_tokens", mloc)
      completion_tokens[i, j] = c.as_count(
          outcome["completion_tokens"], prefix + "completion_tokens", mloc)
      response = outcome["response"]
      if response is None:
        response = ""
      if not isinstance(response, str):
        raise RoutingDataError(f"{mloc}: field {prefix + 'response'!r} must be a string")
      format_ok[i, j] = float(c.format_ok_for_metric(metric, response, labels))
      mask[i, j] = bool(outcome.get("success", True))
    query_ids.append(f"{task}:{i}")
    texts.append(text)
    dataset_ids.append(DATASET_NAMES.index(task))

  cost = c.call_cost(prompt_tokens, completion_tokens, input_price.astype(np.float64),
                     output_price.astype(np.float64))
  return c.assemble_table(
      name=NAME, query_ids=query_ids, texts=texts, dataset_names=DATASET_NAMES,
      dataset_ids=dataset_ids, arm_models=models, input_price=input_price,
      output_price=output_price, score=score, format_ok=format_ok, cost=cost,
      tokens=completion_tokens, outcome_mask=mask, seed=seed,
      description=DESCRIPTION, cost_is_estimated=False)


class Routeprofile(_tfds_base.RoutingLogBuilder):
  """TFDS builder for the RouteProfile logs (manual dir = routing_data folder)."""

  name = NAME
  SUBDIR = "routeprofile"
  MODELS = MODELS
  DATASET_NAMES = DATASET_NAMES
  HOMEPAGE = "https://github.com/ulab-uiuc/RouteProfile"
  DESCRIPTION = DESCRIPTION
  PARSER = staticmethod(parse_routeprofile)
