"""Load a user's own routing logs from JSONL into a `RoutingTable`.

Schema `recal-routing-jsonl`, version 1. UTF-8, one JSON object per line,
blank lines ignored.

Optional header (only as the first non-blank line; recognised by its
`"format"` key):

  {"format": "recal-routing-jsonl", "version": 1,
   "name": "my-router-logs",                       # optional, default: file stem
   "description": "...",                           # optional
   "prices": {"gpt-x": {"input": 2.5, "output": 10.0}, ...},  # optional, USD / 1M tokens
   "arms": ["gpt-x|direct", "gpt-x|cot", ...],     # optional: the arms and their order
   "datasets": ["gsm8k", "mmlu", ...]}             # optional: the datasets and their order

Query record (every other line):

  {"query_id": "gsm8k-00017",          # str (an int is accepted and turned into str); unique
   "query": "Natalia sold clips ...",  # str, the text featurizers see
   "dataset": "gsm8k",                 # str
   "split": "train",                   # optional: "train" | "validation" | "test" (or null)
   "outcomes": {                       # non-empty; one entry per arm that was run
     "gpt-x|cot": {"score": 1.0, "format_ok": true, "cost_usd": 0.0021,
                   "completion_tokens": 312},
     "tiny-llm": {"score": 0.0, "prompt_tokens": 120, "completion_tokens": 4}
   },
   "meta": {...}}                      # optional, free-form, ignored

`outcomes` may also be a list of objects that name their arm:
`[{"model": "gpt-x", "strategy": "cot", "score": 1.0, ...}, ...]`.
An arm key is `"<model>|<strategy>"`; a key without `|` (or a list entry
without `"strategy"`) means strategy `"direct"`.

Outcome fields:

  score              required, number in [0, 1] (exact match 0/1, or a graded
                     score such as a unit-test pass rate), or null: the arm
                     was not run on this query
  format_ok          optional bool (or 0/1), default true: the answer parsed
  cost_usd           number >= 0, the USD cost of the call. If absent, the cost
                     is estimated as prompt_tokens * input / 1e6 +
                     completion_tokens * output / 1e6 with the model's prices
                     from the header or the `prices` argument (then the
                     table's `cost_is_estimated` is True); with neither, it is
                     an error.
  prompt_tokens      optional int >= 0 (needed only to estimate cost)
  completion_tokens  optional number >= 0, default 0 (the table's `tokens`)
  meta               optional, free-form, ignored

Other keys are errors (a misspelt optional field would otherwise be silently
ignored).

Missing outcomes: an arm that was not run on a query is absent from its
`outcomes`, or given as `null`, or with `"score": null` (no other field then);
the table marks it `outcome_mask[q, a] = False` (score, format_ok, cost and
tokens are 0 there and must be ignored by consumers: training never samples
such an arm for that query, evaluation counts a router's choice of one in
`unlogged_choices`, not as a format failure). A query with no outcome at all
is an error.

Splits: if every query has a `split`, those are used. Queries without one get
a split from `stratified_split` (by dataset, with `seed`), except that a query
whose exact text also appears with an explicit split takes that split (so the
same text never lands in two splits).

Prices: the table's `input_price` / `output_price` per arm come from the
header / `prices`; a model without a price gets 0 (unknown).

Features are empty (`[Q, 0]`, featurizer `'none'`); run a featurizer
afterwards (`features.featurize`, or `load_table('jsonl:<path>',
featurizer=...)`).

Every problem raises `RoutingDataError` with `<file>:<line>: field <name>: ...`.

Also here: `dump_jsonl(table, path)` writes any `RoutingTable` in this schema
(e.g. to export the synthetic table), and `jsonl_builder` / `load_jsonl_tfds`
build and read the log as a cached TFDS ArrayRecord dataset (no TensorFlow;
TFDS is imported only when they are called).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from typing import Any, Mapping, Sequence

import numpy as np

from recal_jax.data import table as table_lib

RoutingDataError = table_lib.RoutingDataError

FORMAT_NAME = "recal-routing-jsonl"
FORMAT_VERSION = 1
DEFAULT_STRATEGY = "direct"
_HEADER_KEYS = {"format", "version", "name", "description", "prices", "arms", "datasets"}
_RECORD_KEYS = {"query_id", "query", "dataset", "split", "outcomes", "meta"}
_OUTCOME_KEYS = {"score", "format_ok", "cost_usd", "prompt_tokens", "completion_tokens", "meta"}


class _Where:
  """Formats `<file>:<line>: field <name>: <problem>` errors."""

  def __init__(self, path: str, line: int):
    self.path, self.line = path, line

  def error(self, field: str | None, problem: str) -> RoutingDataError:
    where = f"{self.path}:{self.line}"
    return RoutingDataError(f"{where}: field {field!r}: {problem}" if field
                            else f"{where}: {problem}")


def _is_number(value: Any) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def _number(where: _Where, field: str, value: Any, lo: float, hi: float = math.inf) -> float:
  if not _is_number(value):
    raise where.error(field, f"expected a number, got {type(value).__name__} {value!r}")
  value = float(value)
  if not math.isfinite(value):
    raise where.error(field, f"expected a finite number, got {value!r}")
  if not lo <= value <= hi:
    raise where.error(field, f"{value!r} is outside [{lo}, {hi}]")
  return value


def _string(where: _Where, field: str, value: Any) -> str:
  if not isinstance(value, str):
    raise where.error(field, f"expected a string, got {type(value).__name__} {value!r}")
  return value


def _split_arm(where: _Where, field: str, arm: str) -> tuple[str, str]:
  model, sep, strategy = arm.partition("|")
  strategy = strategy if sep else DEFAULT_STRATEGY
  if not model or not strategy or "|" in strategy:
    raise where.error(field, f"arm {arm!r} is not '<model>|<strategy>' or '<model>'")
  return model, strategy


def _parse_prices(where: _Where, field: str, prices: Any) -> dict[str, tuple[float, float]]:
  if not isinstance(prices, Mapping):
    raise where.error(field, f"expected an object {{model: {{input, output}}}}, got {prices!r}")
  parsed = {}
  for model, price in prices.items():
    sub = f"{field}.{model}"
    if not isinstance(price, Mapping) or set(price) != {"input", "output"}:
      raise where.error(sub, f"expected {{'input': USD/1M, 'output': USD/1M}}, got {price!r}")
    parsed[model] = (_number(where, sub + ".input", price["input"], 0.0),
                     _number(where, sub + ".output", price["output"], 0.0))
  return parsed


def _names(where: _Where, field: str, value: Any) -> list[str]:
  if (not isinstance(value, (list, tuple)) or not value
      or not all(isinstance(v, str) and v for v in value)):
    raise where.error(field, f"expected a non-empty list of strings, got {value!r}")
  if len(set(value)) != len(value):
    raise where.error(field, f"has duplicates: {value!r}")
  return list(value)


def load_jsonl(path: str | os.PathLike, *, arms: Sequence[str] | None = None,
               datasets: Sequence[str] | None = None, seed: int = 0,
               prices: Mapping[str, Mapping[str, float]] | str | os.PathLike | None = None,
               split_fractions: tuple[float, float, float] = (0.7, 0.1, 0.2),
               ) -> table_lib.RoutingTable:
  """Reads a routing log in the `recal-routing-jsonl` schema (module docstring).

  Args:
    path: the .jsonl file.
    arms: if given, the arms (`'model|strategy'`, or `'model'` for
      `'model|direct'`) and their order; an outcome for any other arm is an
      error. Default: the header's `arms`, else first-seen order.
    datasets: if given, the allowed dataset names and their order (datasets
      with no query are kept, empty); any other dataset is an error.
      Default: the header's `datasets`, else first-seen order.
    seed: seed of `stratified_split` for queries without a split.
    prices: `{model: {'input': USD/1M, 'output': USD/1M}}`, or a path to a
      JSON file holding that; overrides the header's prices per model.
    split_fractions: (train, validation, test) for queries without a split.

  Returns:
    A validated `RoutingTable` with empty features `[Q, 0]`.

  Raises:
    RoutingDataError: naming the file, line and field of the first problem.
  """
  path = os.fspath(path)
  header: dict[str, Any] = {}
  records: list[tuple[int, dict]] = []
  try:
    handle = open(path, encoding="utf-8")
  except OSError as e:
    raise RoutingDataError(f"{path}: cannot open: {e}") from None
  with handle:
    try:
      for line_number, line in enumerate(handle, start=1):
        if not line.strip():
          continue
        where = _Where(path, line_number)
        try:
          obj = json.loads(line.rstrip("\r\n"))
        except json.JSONDecodeError as e:
          raise where.error(None, f"invalid JSON: {e.msg} at column {e.colno}") from None
        if not isinstance(obj, dict):
          raise where.error(None, f"expected a JSON object, got {type(obj).__name__}")
        if "format" in obj:
          if records or header:
            raise where.error("format", "a header is only allowed as the first line")
          header = _parse_header(where, obj)
          header["line"] = line_number
          continue
        records.append((line_number, obj))
    except UnicodeDecodeError as e:
      raise RoutingDataError(f"{path}: not valid UTF-8: {e}") from None
  if not records:
    raise RoutingDataError(f"{path}: no query records")

  price_of = dict(header.get("prices", {}))
  if prices is not None:
    if not isinstance(prices, Mapping):
      prices_path = os.fspath(prices)
      try:
        with open(prices_path, encoding="utf-8") as f:
          prices = json.load(f)
      except (OSError, json.JSONDecodeError) as e:
        raise RoutingDataError(f"{prices_path}: cannot read prices: {e}") from None
      price_of.update(_parse_prices(_Where(prices_path, 1), "prices", prices))
    else:
      price_of.update(_parse_prices(_Where("<prices argument>", 0), "prices", prices))

  header_where = _Where(path, header.get("line", 0))
  if arms is not None:
    arm_list = [_split_arm(_Where("<arms argument>", 0), "arms", a)
                for a in _names(_Where("<arms argument>", 0), "arms", list(arms))]
  elif "arms" in header:
    arm_list = [_split_arm(header_where, "arms", a) for a in header["arms"]]
  else:
    arm_list = None
  if arm_list is not None and len(set(arm_list)) != len(arm_list):
    raise RoutingDataError(f"{path}: duplicate arms in {arm_list}")
  fixed_arms = arm_list is not None
  arm_index = {arm: i for i, arm in enumerate(arm_list or [])}

  if datasets is not None:
    dataset_list = _names(_Where("<datasets argument>", 0), "datasets", list(datasets))
  else:
    dataset_list = list(header.get("datasets", []))
  fixed_datasets = datasets is not None or "datasets" in header
  dataset_index = {name: i for i, name in enumerate(dataset_list)}

  query_ids, texts, dataset_ids, splits = [], [], [], []
  first_line_of_id: dict[str, int] = {}
  # Sparse outcomes: (query row, arm index, score, format_ok, cost, tokens).
  entries: list[tuple[int, int, float, float, float, float]] = []
  cost_is_estimated = False
  for row, (line_number, obj) in enumerate(records):
    where = _Where(path, line_number)
    unknown = set(obj) - _RECORD_KEYS
    if unknown:
      raise where.error(sorted(unknown)[0], f"unknown field (allowed: {sorted(_RECORD_KEYS)})")
    for field in ("query_id", "query", "dataset", "outcomes"):
      if field not in obj:
        raise where.error(field, "missing")
    query_id = obj["query_id"]
    if isinstance(query_id, int) and not isinstance(query_id, bool):
      query_id = str(query_id)
    query_id = _string(where, "query_id", query_id)
    if not query_id:
      raise where.error("query_id", "is empty")
    if query_id in first_line_of_id:
      raise where.error("query_id", f"duplicate id {query_id!r} "
                        f"(first on line {first_line_of_id[query_id]})")
    first_line_of_id[query_id] = line_number
    text = _string(where, "query", obj["query"])
    dataset = _string(where, "dataset", obj["dataset"])
    if not dataset:
      raise where.error("dataset", "is empty")
    if dataset not in dataset_index:
      if fixed_datasets:
        raise where.error("dataset", f"unknown dataset {dataset!r} (known: {dataset_list})")
      dataset_index[dataset] = len(dataset_list)
      dataset_list.append(dataset)
    split = obj.get("split")
    if split is not None:
      if split not in table_lib.SPLIT_NAMES:
        raise where.error("split", f"expected one of {table_lib.SPLIT_NAMES} or null, "
                          f"got {split!r}")
      split = table_lib.SPLIT_NAMES.index(split)

    run_arms = 0
    for field, arm, outcome in _outcome_items(where, obj["outcomes"]):
      if arm not in arm_index:
        if fixed_arms:
          raise where.error(field, f"unknown arm '{arm[0]}|{arm[1]}' (known: "
                            f"{['|'.join(a) for a in arm_list]})")
        arm_index[arm] = len(arm_index)
      if _not_run(where, field, outcome):
        continue  # a hole in the log: outcome_mask stays False
      score, format_ok, cost, tokens, estimated = _parse_outcome(
          where, field, arm[0], outcome, price_of)
      cost_is_estimated |= estimated
      entries.append((row, arm_index[arm], score, format_ok, cost, tokens))
      run_arms += 1
    if not run_arms:
      raise where.error("outcomes", "every arm's score is null: the query has no outcome")
    query_ids.append(query_id)
    texts.append(text)
    dataset_ids.append(dataset_index[dataset])
    splits.append(split)

  arm_names = list(arm_index)  # insertion order == index order
  num_queries, num_arms = len(records), len(arm_names)
  score = np.zeros((num_queries, num_arms), np.float32)
  format_ok = np.zeros_like(score)
  cost = np.zeros_like(score)
  tokens = np.zeros_like(score)
  outcome_mask = np.zeros((num_queries, num_arms), bool)
  if entries:
    rows, cols, *values = (np.asarray(v) for v in zip(*entries))
    rows, cols = rows.astype(np.int64), cols.astype(np.int64)
    for target, value in zip((score, format_ok, cost, tokens), values):
      target[rows, cols] = value
    outcome_mask[rows, cols] = True

  texts_array = np.asarray(texts, dtype=object)
  dataset_ids_array = np.asarray(dataset_ids, np.int32)
  split_array = _fill_splits(splits, texts_array, dataset_ids_array, split_fractions, seed)
  input_price = np.array([price_of.get(m, (0.0, 0.0))[0] for m, _ in arm_names], np.float32)
  output_price = np.array([price_of.get(m, (0.0, 0.0))[1] for m, _ in arm_names], np.float32)
  table = table_lib.RoutingTable(
      name=header.get("name") or os.path.splitext(os.path.basename(path))[0],
      query_ids=np.asarray(query_ids, dtype=object),
      texts=texts_array,
      features=np.zeros((num_queries, 0), np.float32),
      dataset_ids=dataset_ids_array,
      dataset_names=tuple(dataset_list),
      arm_models=tuple(m for m, _ in arm_names),
      arm_strategies=tuple(s for _, s in arm_names),
      input_price=input_price,
      output_price=output_price,
      score=score,
      format_ok=format_ok,
      cost=cost,
      tokens=tokens,
      outcome_mask=outcome_mask,
      split=split_array,
      featurizer="none",
      description=header.get("description") or f"routing logs from {path}",
      cost_is_estimated=cost_is_estimated,
  )
  try:
    return table.validate()
  except RoutingDataError as e:
    raise RoutingDataError(f"{path}: {e}") from None


def _parse_header(where: _Where, obj: dict) -> dict:
  unknown = set(obj) - _HEADER_KEYS
  if unknown:
    raise where.error(sorted(unknown)[0], f"unknown header field (allowed: {sorted(_HEADER_KEYS)})")
  if obj["format"] != FORMAT_NAME:
    raise where.error("format", f"expected {FORMAT_NAME!r}, got {obj['format']!r}")
  version = obj.get("version", FORMAT_VERSION)
  if version != FORMAT_VERSION:
    raise where.error("version", f"only version {FORMAT_VERSION} is supported, got {version!r}")
  header = {}
  for field in ("name", "description"):
    if field in obj:
      header[field] = _string(where, field, obj[field])
  if "prices" in obj:
    header["prices"] = _parse_prices(where, "prices", obj["prices"])
  if "arms" in obj:
    header["arms"] = _names(where, "arms", obj["arms"])
  if "datasets" in obj:
    header["datasets"] = _names(where, "datasets", obj["datasets"])
  return header


def _outcome_items(where: _Where, outcomes: Any):
  """Yields (field name for errors, (model, strategy), outcome dict)."""
  if isinstance(outcomes, Mapping):
    items = []
    for key, outcome in outcomes.items():
      field = f"outcomes.{key}"
      items.append((field, _split_arm(where, field, key), outcome))
  elif isinstance(outcomes, list):
    items = []
    for i, outcome in enumerate(outcomes):
      field = f"outcomes[{i}]"
      if not isinstance(outcome, Mapping):
        raise where.error(field, f"expected an object, got {type(outcome).__name__}")
      if "model" not in outcome:
        raise where.error(field + ".model", "missing")
      model = _string(where, field + ".model", outcome["model"])
      strategy = _string(where, field + ".strategy",
                         outcome.get("strategy", DEFAULT_STRATEGY))
      if not model or not strategy or "|" in model or "|" in strategy:
        raise where.error(field, f"bad arm model={model!r} strategy={strategy!r}")
      rest = {k: v for k, v in outcome.items() if k not in ("model", "strategy")}
      items.append((field, (model, strategy), rest))
  else:
    raise where.error("outcomes", f"expected an object or a list, got {type(outcomes).__name__}")
  if not items:
    raise where.error("outcomes", "the query has no outcome (at least one arm is needed)")
  seen = set()
  for field, arm, _ in items:
    if arm in seen:
      raise where.error(field, f"arm '{arm[0]}|{arm[1]}' appears twice in this query")
    seen.add(arm)
  return items


def _not_run(where: _Where, field: str, outcome: Any) -> bool:
  """True for `null` or `{"score": null}`: the arm was not run on this query."""
  if outcome is None:
    return True
  if isinstance(outcome, Mapping) and "score" in outcome and outcome["score"] is None:
    given = sorted(k for k, v in outcome.items() if v is not None and k != "meta")
    if given:
      raise where.error(f"{field}.{given[0]}", "given for an arm whose score is null "
                        "(null means the arm was not run on this query)")
    return True
  return False


def _parse_outcome(where: _Where, field: str, model: str, outcome: Any,
                   price_of: Mapping[str, tuple[float, float]]):
  """(score, format_ok, cost, completion tokens, cost was estimated)."""
  if not isinstance(outcome, Mapping):
    raise where.error(field, f"expected an object, got {type(outcome).__name__}")
  unknown = set(outcome) - _OUTCOME_KEYS
  if unknown:
    raise where.error(f"{field}.{sorted(unknown)[0]}",
                      f"unknown field (allowed: {sorted(_OUTCOME_KEYS)})")
  if "score" not in outcome:
    raise where.error(field + ".score", "missing")
  score = _number(where, field + ".score", outcome["score"], 0.0, 1.0)
  format_ok = outcome.get("format_ok", True)
  if not (isinstance(format_ok, bool) or (_is_number(format_ok) and format_ok in (0, 1))):
    raise where.error(field + ".format_ok", f"expected true/false (or 0/1), got {format_ok!r}")
  prompt_tokens = None
  if "prompt_tokens" in outcome:
    prompt_tokens = outcome["prompt_tokens"]
    if not isinstance(prompt_tokens, int) or isinstance(prompt_tokens, bool) or prompt_tokens < 0:
      raise where.error(field + ".prompt_tokens",
                        f"expected an integer >= 0, got {prompt_tokens!r}")
  completion_tokens = None
  if "completion_tokens" in outcome:
    completion_tokens = _number(where, field + ".completion_tokens",
                                outcome["completion_tokens"], 0.0)
  if "cost_usd" in outcome:
    cost = _number(where, field + ".cost_usd", outcome["cost_usd"], 0.0)
    estimated = False
  else:
    if prompt_tokens is None or completion_tokens is None:
      raise where.error(field + ".cost_usd", "missing (give cost_usd, or prompt_tokens and "
                        "completion_tokens with the model's prices)")
    if model not in price_of:
      raise where.error(field + ".cost_usd", f"missing, and model {model!r} has no price "
                        f"to estimate it (priced: {sorted(price_of)})")
    input_price, output_price = price_of[model]
    cost = (prompt_tokens * input_price + completion_tokens * output_price) / 1e6
    estimated = True
  return score, float(format_ok), cost, completion_tokens or 0.0, estimated


def _fill_splits(splits: list[int | None], texts: np.ndarray, dataset_ids: np.ndarray,
                 fractions: tuple[float, float, float], seed: int) -> np.ndarray:
  """Explicit splits kept; the rest stratified, never splitting a text."""
  given = np.array([s is not None for s in splits])
  out = np.array([s if s is not None else 0 for s in splits], np.int8)
  if given.all():
    return out
  missing = np.flatnonzero(~given)
  out[missing] = table_lib.stratified_split(texts[missing], dataset_ids[missing], fractions,
                                            seed=seed)
  explicit = {t: s for t, s, g in zip(texts, out, given) if g}
  for i in missing:
    if texts[i] in explicit:
      out[i] = explicit[texts[i]]
  return out


def dump_jsonl(table: table_lib.RoutingTable, path: str | os.PathLike) -> None:
  """Writes `table` in the `recal-routing-jsonl` schema (features are not kept).

  `load_jsonl(path)` gives back the same queries, arms, outcomes, masks,
  splits and prices (float32 values round-trip exactly).
  """
  prices = {}
  for model, input_price, output_price in zip(table.arm_models, table.input_price,
                                              table.output_price):
    prices[model] = {"input": float(input_price), "output": float(output_price)}
  header = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "name": table.name,
            "description": table.description, "prices": prices,
            "arms": list(table.arm_names), "datasets": list(table.dataset_names)}
  with open(os.fspath(path), "w", encoding="utf-8") as f:
    f.write(json.dumps(header) + "\n")
    for q in range(table.num_queries):
      outcomes = {}
      for a in np.flatnonzero(table.outcome_mask[q]):
        outcomes[table.arm_names[a]] = {
            "score": float(table.score[q, a]),
            "format_ok": bool(table.format_ok[q, a]),
            "cost_usd": float(table.cost[q, a]),
            "completion_tokens": float(table.tokens[q, a]),
        }
      record = {"query_id": str(table.query_ids[q]), "query": str(table.texts[q]),
                "dataset": table.dataset_names[table.dataset_ids[q]],
                "split": table_lib.SPLIT_NAMES[table.split[q]], "outcomes": outcomes}
      f.write(json.dumps(record, ensure_ascii=False) + "\n")


# ------------------------------------------------------------------ TFDS
def _table_digest(table: table_lib.RoutingTable) -> str:
  """sha256 over everything `load_jsonl` put into `table` (names the cache)."""
  digest = hashlib.sha256()
  digest.update(json.dumps(table.describe(), sort_keys=True).encode())
  digest.update(json.dumps([list(map(str, table.texts)), list(table.arm_strategies)]).encode())
  for array in (table.tokens, table.split, table.dataset_ids):
    digest.update(np.ascontiguousarray(array).tobytes())
  return digest.hexdigest()[:16]


def jsonl_builder(path: str | os.PathLike, *, data_dir: str | os.PathLike, seed: int = 0,
                  **load_kwargs):
  """A prepared TFDS builder (ArrayRecord, no TensorFlow) for a JSONL log.

  The file is parsed with `load_jsonl(path, seed=seed, **load_kwargs)`; its
  arms and datasets become the builder's fixed ones, and the builder config
  is named `d<digest>_seed<seed>` after a hash of the parsed contents, so a
  changed file (or other arguments) never reads a stale cache. Examples and
  metadata follow `recal_jax.data.builders._tfds_base` (one example per query,
  [A] outcome tensors); read back with `load_jsonl_tfds` or
  `_tfds_base.table_from_builder(builder)`.

  Returns:
    The `tfds.core.GeneratorBasedBuilder` instance, already prepared in
    `data_dir` (`<data_dir>/routing_jsonl/d<digest>_seed<seed>/1.0.0`).
  """
  # TFDS loads only here: `recal_jax.data` stays a numpy-only import.
  from recal_jax.data.builders import _tfds_base  # pylint: disable=import-outside-toplevel

  path = os.fspath(path)
  table = load_jsonl(path, seed=seed, **load_kwargs)

  class RoutingJsonl(_tfds_base.RoutingLogBuilder, skip_registration=True):
    """A user's routing log in the recal-routing-jsonl schema."""
    name = "routing_jsonl"
    SUBDIR = ""
    MODELS = table.arm_models  # one entry per arm (models may repeat)
    DATASET_NAMES = table.dataset_names
    HOMEPAGE = ""
    DESCRIPTION = f"{table.description} (recal-routing-jsonl)"

    @staticmethod
    def PARSER(folder, *, seed):  # pylint: disable=invalid-name
      del folder, seed  # parsed above, with this seed
      return table

  config = _tfds_base.RoutingLogConfig(
      name=f"d{_table_digest(table)}_seed{int(seed)}", seed=int(seed),
      description=f"{path} with split seed {seed}")
  builder = RoutingJsonl(config=config, data_dir=os.fspath(data_dir),
                         file_format="array_record")
  _tfds_base.prepare(builder, os.path.dirname(os.path.abspath(path)))
  return builder


def load_jsonl_tfds(path: str | os.PathLike, *, data_dir: str | os.PathLike, seed: int = 0,
                    **load_kwargs) -> table_lib.RoutingTable:
  """`load_jsonl` through a cached TFDS ArrayRecord build (`jsonl_builder`).

  Gives the same table as `load_jsonl(path, seed=seed, **load_kwargs)` (the
  read-back is checked against the stored fingerprint).
  """
  from recal_jax.data.builders import _tfds_base  # pylint: disable=import-outside-toplevel
  return _tfds_base.table_from_builder(
      jsonl_builder(path, data_dir=data_dir, seed=seed, **load_kwargs))
