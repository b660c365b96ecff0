"""RouteLLM evaluation logs: MMLU + GSM8K for Mixtral-8x7B vs GPT-4-1106.

Source: `routellm/` of the routing_data folder (github.com/lm-sys/RouteLLM,
Apache-2.0):

* `mmlu/responses/mmlu_<subject>.csv` (57 files, 14,042 rows): columns
  `prompt`, `mistralai/Mixtral-8x7B-Instruct-v0.1`, `gpt-4-1106-preview`
  (True / False correctness). RouteLLM generated one token after a 5-shot
  prefix (`max_new_tokens=1`), so there are no responses.
* `gsm8k/gsm8k_responses.csv` (1,319 rows): `prompt`, the two correctness
  columns and `<model>_response` columns with each model's full answer
  (8-shot prompts, `max_tokens=1024`).
* `{mmlu,gsm8k}/contaminated_prompts.jsonl`: rows whose `eval_prompt` equals a
  `prompt` are dropped, as RouteLLM's own benchmarks do (5 MMLU and 12 GSM8K
  rows, leaving 14,037 + 1,307). MT-Bench is not used (its judgements are not
  in the folder).

Then rows are de-duplicated by exact prompt text (first wins, subjects in
sorted file order): MMLU repeats 105 questions (78 across subjects, 4 with
different outcomes), leaving 13,932 MMLU + 1,307 GSM8K queries, re-split
70/10/20 by dataset with `stratified_split`.

Arms: the two models, strategy 'direct'. score = correctness (0 / 1).
format_ok: GSM8K -> a parseable final number in the logged response
(`final_number_ok`); MMLU -> 1 (no response logged). COST IS ESTIMATED with
published list prices (below): prompt tokens = ceil(len(prompt) / 4) (the
few-shot prefix RouteLLM prepended is not in the logs and is not counted);
completion tokens = 1 for MMLU (one generated token) and
ceil(len(response) / 4) for GSM8K. tokens holds these completion tokens.
"""

from __future__ import annotations

import glob
import os

import numpy as np

from recal_jax.data.builders import _common as c
from recal_jax.data.builders import _tfds_base
from recal_jax.data.table import RoutingDataError, RoutingTable, dedupe_by_text

NAME = "routellm"
MIXTRAL = "mistralai/Mixtral-8x7B-Instruct-v0.1"
GPT4 = "gpt-4-1106-preview"
MODELS = (MIXTRAL, GPT4)  # weak, strong
DATASET_NAMES = ("mmlu", "gsm8k")

# Published list prices, USD per million (input, output) tokens:
# * gpt-4-1106-preview (GPT-4 Turbo): $10 input / $30 output, OpenAI pricing
#   at its release (November 2023);
# * Mixtral-8x7B-Instruct-v0.1: $0.60 / $0.60, Together AI serverless price
#   (the same price routeprofile/candidate_models.json lists for this model).
PRICES = {
    MIXTRAL: (0.60, 0.60),
    GPT4: (10.00, 30.00),
}

MMLU_COMPLETION_TOKENS = 1  # RouteLLM's MMLU generation used max_new_tokens=1.

DESCRIPTION = (
    "RouteLLM evaluation logs (github.com/lm-sys/RouteLLM, Apache-2.0): MMLU (57 subjects) "
    "and GSM8K correctness for Mixtral-8x7B-Instruct-v0.1 (weak) vs gpt-4-1106-preview "
    "(strong), strategy 'direct'; contaminated prompts dropped, de-duplicated by text "
    "(first wins), re-split 70/10/20 stratified by dataset. COST IS ESTIMATED: "
    "ceil(chars/4) prompt tokens (few-shot prefix not counted), 1 completion token on "
    "MMLU and ceil(len(response)/4) on GSM8K, times list prices (Mixtral $0.60/$0.60, "
    "GPT-4-1106 $10/$30 per M tokens). format_ok: GSM8K a parseable final number in "
    "the response; MMLU 1 (no response logged).")


def _contaminated(path: str) -> set[str]:
  prompts = set()
  for lineno, obj in c.read_jsonl(path):
    prompts.add(c.require_str(obj, "eval_prompt", c.where(path, f"line {lineno}")))
  return prompts


def parse_routellm(folder: str | os.PathLike, *, seed: int = 0) -> RoutingTable:
  """Parses the `routellm/` folder (MMLU + GSM8K) into a `RoutingTable`.

  Args:
    folder: the `routellm/` folder.
    seed: seed of the stratified train/validation/test split.

  Raises:
    RoutingDataError: naming the file, the line and the field, for a missing
      column, a correctness value other than True/False, an empty prompt, bad
      JSONL in a contamination list, ...
  """
  folder = os.fspath(folder)
  query_ids, texts, datasets, score, format_ok, completion = [], [], [], [], [], []

  mmlu_dir = os.path.join(folder, "mmlu", "responses")
  mmlu_files = sorted(glob.glob(os.path.join(mmlu_dir, "mmlu_*.csv")))
  if not mmlu_files:
    raise RoutingDataError(f"{mmlu_dir}: no mmlu_<subject>.csv files")
  dropped = _contaminated(os.path.join(folder, "mmlu", "contaminated_prompts.jsonl"))
  for path in mmlu_files:
    subject = os.path.basename(path)[len("mmlu_"):-len(".csv")]
    for row_index, (lineno, row) in enumerate(c.read_csv_rows(path, ("prompt",) + MODELS)):
      loc = c.where(path, f"line {lineno}")
      prompt = c.require_str(row, "prompt", loc)
      outcomes = [c.as_bool_text(row[m], m, loc) for m in MODELS]
      if prompt in dropped:
        continue
      query_ids.append(f"mmlu/{subject}:{row_index}")
      texts.append(prompt)
      datasets.append(0)
      score.append(outcomes)
      format_ok.append([1.0] * len(MODELS))
      completion.append([MMLU_COMPLETION_TOKENS] * len(MODELS))

  path = os.path.join(folder, "gsm8k", "gsm8k_responses.csv")
  dropped = _contaminated(os.path.join(folder, "gsm8k", "contaminated_prompts.jsonl"))
  response_columns = tuple(f"{m}_response" for m in MODELS)
  for row_index, (lineno, row) in enumerate(
      c.read_csv_rows(path, ("prompt",) + MODELS + response_columns)):
    loc = c.where(path, f"line {lineno}")
    prompt = c.require_str(row, "prompt", loc)
    outcomes = [c.as_bool_text(row[m], m, loc) for m in MODELS]
    if prompt in dropped:
      continue
    responses = [row[col] for col in response_columns]
    query_ids.append(f"gsm8k:{row_index}")
    texts.append(prompt)
    datasets.append(1)
    score.append(outcomes)
    format_ok.append([float(c.final_number_ok(r)) for r in responses])
    completion.append([c.estimate_tokens(r) if r.strip() else 0 for r in responses])

  keep = dedupe_by_text(texts)
  texts = [texts[k] for k in keep]
  query_ids = [query_ids[k] for k in keep]
  datasets = np.asarray(datasets)[keep]
  score = np.asarray(score, np.float64)[keep]
  format_ok = np.asarray(format_ok, np.float64)[keep]
  completion = np.asarray(completion, np.float64)[keep]
  input_price = np.asarray([PRICES[m][0] for m in MODELS], np.float32)
  output_price = np.asarray([PRICES[m][1] for m in MODELS], np.float32)
  prompt_tokens = np.asarray([c.estimate_tokens(t) for t in texts], np.float64)[:, None]
  cost = c.call_cost(prompt_tokens, completion, input_price.astype(np.float64)[None],
                     output_price.astype(np.float64)[None])
  return c.assemble_table(
      name=NAME, query_ids=query_ids, texts=texts, dataset_names=DATASET_NAMES,
      dataset_ids=datasets, arm_models=MODELS, input_price=input_price,
      output_price=output_price, score=score, format_ok=format_ok, cost=cost,
      tokens=completion, outcome_mask=np.ones(score.shape, bool), seed=seed,
      description=DESCRIPTION, cost_is_estimated=True)


class Routellm(_tfds_base.RoutingLogBuilder):
  """TFDS builder for the RouteLLM MMLU + GSM8K logs (manual dir = routing_data)."""

  name = NAME
  SUBDIR = "routellm"
  MODELS = MODELS
  DATASET_NAMES = DATASET_NAMES
  HOMEPAGE = "https://github.com/lm-sys/RouteLLM"
  DESCRIPTION = DESCRIPTION
  PARSER = staticmethod(parse_routellm)
