"""Shared helpers for the real-log parsers and their TFDS builders.

Everything here is pure python / numpy:

* strict readers (`read_json`, `read_jsonl`, `read_csv_rows`) and field
  checkers that raise `RoutingDataError` naming the file, the record / line and
  the field;
* answer-format checks on logged responses (`format_ok_for_metric`);
* the token estimate used where a log has no token counts
  (`estimate_tokens`: about four characters per token);
* `assemble_table`, which turns parsed columns into a validated
  `RoutingTable` with empty features and a stratified split;
* the TFDS feature spec / record <-> table conversion shared by the builders.
"""

from __future__ import annotations

import ast
import csv
import io
import json
import math
import os
import re
import textwrap
import warnings
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from recal_jax.data.table import RoutingDataError, RoutingTable, stratified_split

# Every arm in these logs answers with one prompt template: no reasoning
# strategy varies, so each model is one arm with strategy 'direct'.
DIRECT = "direct"

# Train / validation / test fractions of the stratified re-split.
SPLIT_FRACTIONS = (0.7, 0.1, 0.2)

# Where a log has no token counts, prompt / completion tokens are estimated as
# ceil(len(text) / CHARS_PER_TOKEN): the usual ~4 characters per BPE token for
# English text.
CHARS_PER_TOKEN = 4.0


# --------------------------------------------------------------------------
# Strict readers.
# --------------------------------------------------------------------------
def read_text(path: str | os.PathLike) -> str:
  """The file as text; a missing file or bytes that are not UTF-8 (e.g. a file
  cut inside a multi-byte character) raise `RoutingDataError` with the line."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise RoutingDataError(f"{path}: file not found")
  with open(path, "rb") as f:
    data = f.read()
  try:
    return data.decode("utf-8")
  except UnicodeDecodeError as e:
    line = data[:e.start].count(b"\n") + 1
    raise RoutingDataError(f"{path}: line {line}: not valid UTF-8 ({e.reason})") from e


def read_json(path: str | os.PathLike) -> Any:
  """Parses a JSON file; malformed JSON raises `RoutingDataError` with the line."""
  path = os.fspath(path)
  text = read_text(path)
  try:
    return json.loads(text)
  except json.JSONDecodeError as e:
    raise RoutingDataError(
        f"{path}: line {e.lineno}, column {e.colno}: invalid JSON ({e.msg})") from e


def read_jsonl(path: str | os.PathLike) -> list[tuple[int, dict]]:
  """(1-based line number, object) for each non-blank line of a JSONL file."""
  path = os.fspath(path)
  rows = []
  for lineno, line in enumerate(read_text(path).split("\n"), 1):
    if not line.strip():
      continue
    try:
      obj = json.loads(line)
    except json.JSONDecodeError as e:
      raise RoutingDataError(
          f"{path}: line {lineno}: invalid JSON ({e.msg})") from e
    if not isinstance(obj, dict):
      raise RoutingDataError(
          f"{path}: line {lineno}: expected a JSON object, got {type(obj).__name__}")
    rows.append((lineno, obj))
  return rows


def read_csv_rows(path: str | os.PathLike,
                  required_columns: Sequence[str]) -> Iterator[tuple[int, dict]]:
  """(1-based line of the row's start, row dict) for each data row of a CSV.

  Raises `RoutingDataError` if a required column is missing or a row is short.
  """
  path = os.fspath(path)
  csv.field_size_limit(1 << 30)
  with io.StringIO(read_text(path), newline="") as f:
    reader = csv.reader(f)
    try:
      header = next(reader)
    except StopIteration:
      raise RoutingDataError(f"{path}: line 1: empty file, expected a CSV header") from None
    missing = [c for c in required_columns if c not in header]
    if missing:
      raise RoutingDataError(
          f"{path}: line 1: missing column {missing[0]!r} (header: {header})")
    start = reader.line_num + 1
    try:
      for row in reader:
        if len(row) != len(header):
          raise RoutingDataError(
              f"{path}: line {start}: {len(row)} fields, expected {len(header)} "
              f"({', '.join(header)})")
        yield start, dict(zip(header, row))
        start = reader.line_num + 1
    except csv.Error as e:
      raise RoutingDataError(f"{path}: line {reader.line_num}: bad CSV ({e})") from e


# --------------------------------------------------------------------------
# Field checks.
# --------------------------------------------------------------------------
def where(path: str | os.PathLike, record: str) -> str:
  return f"{os.fspath(path)}: {record}"


def require(obj: Mapping, field: str, loc: str) -> Any:
  """`obj[field]`, or `RoutingDataError` naming the location and field."""
  if not isinstance(obj, Mapping):
    raise RoutingDataError(f"{loc}: expected an object, got {type(obj).__name__}")
  if field not in obj:
    raise RoutingDataError(f"{loc}: missing field {field!r}")
  return obj[field]


def require_str(obj: Mapping, field: str, loc: str, *, nonempty: bool = True) -> str:
  value = require(obj, field, loc)
  if not isinstance(value, str) or (nonempty and not value.strip()):
    raise RoutingDataError(
        f"{loc}: field {field!r} must be a non-empty string, got {value!r:.80}")
  return value


def literal(value: Any, field: str, loc: str) -> Any:
  """Parses a Python-repr string (e.g. "{'text': [...]}") safely; else returns it.

  Uses `ast.literal_eval`, which only accepts literals (never evaluates code).
  """
  if not isinstance(value, str):
    return value
  try:
    return ast.literal_eval(value)
  except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as e:
    raise RoutingDataError(
        f"{loc}: field {field!r} is not a valid Python/JSON literal ({type(e).__name__}: "
        f"{value!r:.80})") from e


def as_score(value: Any, field: str, loc: str) -> float:
  """A finite number in [0, 1] (bools rejected), else `RoutingDataError`."""
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    raise RoutingDataError(f"{loc}: field {field!r} must be a number in [0, 1], got {value!r}")
  value = float(value)
  if not (math.isfinite(value) and 0.0 <= value <= 1.0):
    raise RoutingDataError(f"{loc}: field {field!r} is {value!r}, outside [0, 1]")
  return value


def as_count(value: Any, field: str, loc: str) -> int:
  """A non-negative integer token count, else `RoutingDataError`."""
  if isinstance(value, bool) or not isinstance(value, (int, float)) or (
      isinstance(value, float) and not value.is_integer()) or value < 0:
    raise RoutingDataError(
        f"{loc}: field {field!r} must be a non-negative integer, got {value!r}")
  return int(value)


def as_price(value: Any, field: str, loc: str) -> float:
  """A finite non-negative price (USD per million tokens)."""
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
      math.isfinite(value) and value >= 0):
    raise RoutingDataError(
        f"{loc}: field {field!r} must be a non-negative number, got {value!r}")
  return float(value)


def as_bool_text(value: str, field: str, loc: str) -> float:
  """'True' / 'False' (pandas' CSV form of booleans) as 1.0 / 0.0."""
  text = value.strip()
  if text in ("True", "true", "1"):
    return 1.0
  if text in ("False", "false", "0"):
    return 0.0
  raise RoutingDataError(f"{loc}: field {field!r} must be True or False, got {value!r:.40}")


def load_prices(path: str | os.PathLike, models: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
  """[A] input / output prices of `models` from a `{model: {input_price, ...}}` file."""
  cards = read_json(path)
  if not isinstance(cards, dict):
    raise RoutingDataError(f"{os.fspath(path)}: expected a JSON object of model cards")
  inp, out = [], []
  for m in models:
    loc = where(path, f"model {m!r}")
    if m not in cards:
      raise RoutingDataError(f"{loc}: missing model (needed for its prices)")
    inp.append(as_price(require(cards[m], "input_price", loc), "input_price", loc))
    out.append(as_price(require(cards[m], "output_price", loc), "output_price", loc))
  return np.asarray(inp, np.float32), np.asarray(out, np.float32)


def estimate_tokens(text: str) -> int:
  """Estimated BPE tokens of `text`: ceil(characters / 4), at least 1."""
  return max(1, math.ceil(len(text) / CHARS_PER_TOKEN))


def call_cost(prompt_tokens, completion_tokens, input_price, output_price):
  """USD of one call: tokens times USD-per-million-token prices."""
  return (np.asarray(prompt_tokens, np.float64) * input_price +
          np.asarray(completion_tokens, np.float64) * output_price) / 1e6


# --------------------------------------------------------------------------
# Answer-format checks on logged responses.
# --------------------------------------------------------------------------
_NUMBER = r"[-+]?\$?\s?\d[\d,]*(?:\.\d+)?"
_DECOR_OPEN = r"[\s*_\"'`(\[{]*"
_DECOR_CLOSE = r"[\s*_\"'`)\]}.:;!]*"


def choice_labels(choices: Any, loc: str) -> list[str]:
  """Valid answer labels of a multiple-choice query.

  `choices` is `{'label' or 'labels': [...], 'text': [...]}` (labels given) or
  a plain list of option texts (labelled A, B, C, ... by position), possibly as
  a Python-repr string.
  """
  choices = literal(choices, "choices", loc)
  if isinstance(choices, dict):
    labels = choices.get("labels", choices.get("label"))
    if not isinstance(labels, (list, tuple)) or not labels:
      raise RoutingDataError(f"{loc}: field 'choices' has no 'label'/'labels' list")
    return [str(x).strip() for x in labels]
  if isinstance(choices, (list, tuple)) and choices:
    if len(choices) > 26:
      raise RoutingDataError(f"{loc}: field 'choices' has {len(choices)} options (> 26)")
    return [chr(ord("A") + i) for i in range(len(choices))]
  raise RoutingDataError(
      f"{loc}: field 'choices' must be a dict with labels or a list of options, "
      f"got {choices!r:.80}")


def multiple_choice_ok(response: str, labels: Sequence[str]) -> bool:
  """True if exactly one valid choice label is identifiable in `response`.

  Looked for in order, the first rule that finds a label decides:
    1. the whole response is one label, decorated or not ('C', '(C)', '**C.**');
       a bare label-like token that is not a valid label ('(E)' for A-D) fails;
    2. the response starts with a label marker followed by the option text
       ('(C) having fun', 'C. Were born ...', '[E, closet]');
    3. explicit statements ('answer is (C)', 'Answer: C', 'correct option is C';
       'option'/'choice' need a verb, so an 'each option: A. ...' list is not
       one): ok iff they all name the same label;
    4. the last non-empty line is one label ('(D)') or starts with a label
       marker ('(B) Involuntary manslaughter.');
    5. parenthesised markers '(C)' anywhere: ok iff exactly one distinct label.
  Labels are matched case-sensitively, so the article 'a' is never 'A'.
  """
  text = (response or "").strip()
  if not text:
    return False
  labels = [str(x) for x in labels]
  lab = "|".join(re.escape(x) for x in sorted(labels, key=len, reverse=True))
  token = r"[A-Z]|\d{1,2}"

  def bare(s: str) -> str | None:
    s = s.strip().strip("*_#` ").strip()
    s = re.sub(r"^(?i:(?:the\s+)?(?:final\s+|correct\s+)?(?:answer|option|choice))"
               r"(?:\s+is)?\s*[:\-]?\s*", "", s)
    m = re.fullmatch(_DECOR_OPEN + rf"({token})" + _DECOR_CLOSE, s)
    return m.group(1) if m else None

  found = bare(text)  # Rule 1.
  if found is not None:
    return found in labels
  marker_start = (r"[\s*_\"'`]*(?:[(\[]?(" + lab + r")[).\]:](?:\s|$)|\[(" + lab +
                  r"),)")
  if re.match(marker_start, text):
    return True  # Rule 2.
  verb = r"\s+(?i:is|would\s+be|should\s+be|will\s+be)"
  explicit = set(re.findall(
      rf"(?:(?i:answer)(?:{verb})?|(?i:option|choice){verb})"
      rf"\s*[:\-]?\s*\**\s*[(\[]?({lab})(?![A-Za-z0-9])", text))
  if explicit:  # Rule 3.
    return len(explicit) == 1
  last_line = text.splitlines()[-1]
  found = bare(last_line)  # Rule 4.
  if found is not None and found in labels:
    return True
  if re.match(marker_start, last_line):
    return True
  markers = set(re.findall(rf"\(({lab})\)", text))  # Rule 5.
  return len(markers) == 1


def _last_boxed(text: str) -> str | None:
  """Content of the last `\\boxed{...}` (balanced braces), or None."""
  start = text.rfind("\\boxed{")
  if start < 0:
    return None
  i, depth = start + len("\\boxed{"), 1
  for j in range(i, len(text)):
    if text[j] == "{":
      depth += 1
    elif text[j] == "}":
      depth -= 1
      if depth == 0:
        return text[i:j]
  return None


def final_number_ok(response: str, *, allow_boxed: bool = False) -> bool:
  """True if a final numeric answer is parseable from `response`.

  Accepted: a `\\boxed{...}` holding a number (any non-empty boxed content if
  `allow_boxed`, for MATH-style answers such as fractions), a GSM8K-style
  '#### 18', an explicit 'answer is / Answer: <number>', or a number on the
  last non-empty line.
  """
  text = (response or "").strip()
  if not text:
    return False
  boxed = _last_boxed(text)
  if boxed is not None and boxed.strip():
    if allow_boxed or re.search(r"\d", boxed):
      return True
  if re.search(r"####\s*" + _NUMBER, text):
    return True
  if re.search(r"(?i:answer)[^\n\d]{0,40}?" + _NUMBER, text):
    return True
  return re.search(r"\d", text.splitlines()[-1]) is not None


_FENCED = re.compile(r"```[ \t]*[\w+-]*[ \t]*\n?(.*?)```", re.S)
_BEGIN_DONE = re.compile(r"\[BEGIN\](.*?)(?:\[DONE\]|$)", re.S | re.I)


def _parses_as_python(code: str) -> bool:
  """True if `code` parses (`ast.parse`, never executed) as a module or body."""
  code = textwrap.dedent(code.replace("\t", "    ")).strip("\n")
  if not code.strip():
    return False
  for candidate in (code, "def _body():\n" + textwrap.indent(code, "    ")):
    try:
      with warnings.catch_warnings():  # e.g. invalid escapes in logged code
        warnings.simplefilter("ignore")
        ast.parse(candidate)
      return True
    except (SyntaxError, ValueError, MemoryError, RecursionError):
      continue
  return False


def code_ok(response: str) -> bool:
  """True if `response` holds syntactically valid Python code.

  The code is taken from fenced blocks, else from a `[BEGIN] ... [DONE]`
  block (the delimiters the RouteProfile prompts ask for), else from the first
  `def` line on. It must parse with `ast.parse` (only parsed, never run) as a
  module or as a function body (HumanEval answers are bare bodies).
  """
  text = response or ""
  blocks = _FENCED.findall(text) or _BEGIN_DONE.findall(text)
  if not blocks:
    m = re.search(r"(?m)^[ \t]*(?:async\s+)?def\s+\w+\s*\(", text)
    blocks = [text[m.start():]] if m else []
  return any(_parses_as_python(b) for b in blocks)


def nonempty_ok(response: str) -> bool:
  """Free-form answers (QA F1, CommonGen): any non-blank response parses."""
  return bool((response or "").strip())


# Metric name -> how its answer format is checked (see `format_ok_for_metric`).
FORMAT_RULES = {
    "em_mc": "exactly one valid choice label identifiable (multiple_choice_ok)",
    "gsm8k": "a parseable final number (final_number_ok)",
    "math": "a parseable final number or a non-empty \\boxed{} answer",
    "code_eval": "a code block / [BEGIN] block / def that parses as Python (code_ok)",
    "f1_score": "a non-empty response (free-form short answer)",
    "commongen_coverage": "a non-empty response (free-form sentence)",
}


def format_ok_for_metric(metric: str, response: str,
                         labels: Sequence[str] | None = None) -> bool:
  """The answer-format check for one response under `metric` (see FORMAT_RULES)."""
  if metric == "em_mc":
    return multiple_choice_ok(response, labels or ())
  if metric == "gsm8k":
    return final_number_ok(response)
  if metric == "math":
    return final_number_ok(response, allow_boxed=True)
  if metric == "code_eval":
    return code_ok(response)
  return nonempty_ok(response)


# --------------------------------------------------------------------------
# Table assembly.
# --------------------------------------------------------------------------
def assemble_table(*, name: str, query_ids: Sequence[str], texts: Sequence[str],
                   dataset_names: Sequence[str], dataset_ids: Sequence[int],
                   arm_models: Sequence[str], input_price, output_price,
                   score, format_ok, cost, tokens, outcome_mask, seed: int,
                   description: str, cost_is_estimated: bool) -> RoutingTable:
  """A validated `RoutingTable` (features [Q, 0], featurizer 'none').

  The split is `stratified_split(texts, dataset_ids, SPLIT_FRACTIONS, seed)`.
  """
  texts_arr = np.empty(len(texts), dtype=object)
  texts_arr[:] = list(texts)
  dataset_ids = np.asarray(dataset_ids, np.int32)
  q = len(texts_arr)
  table = RoutingTable(
      name=name,
      query_ids=np.asarray(list(query_ids), dtype=object),
      texts=texts_arr,
      features=np.zeros((q, 0), np.float32),
      dataset_ids=dataset_ids,
      dataset_names=tuple(dataset_names),
      arm_models=tuple(arm_models),
      arm_strategies=(DIRECT,) * len(arm_models),
      input_price=np.asarray(input_price, np.float32),
      output_price=np.asarray(output_price, np.float32),
      score=np.asarray(score, np.float32).reshape(q, -1),
      format_ok=np.asarray(format_ok, np.float32).reshape(q, -1),
      cost=np.asarray(cost, np.float32).reshape(q, -1),
      tokens=np.asarray(tokens, np.float32).reshape(q, -1),
      outcome_mask=np.asarray(outcome_mask, bool).reshape(q, -1),
      split=stratified_split(texts_arr, dataset_ids, SPLIT_FRACTIONS, seed),
      featurizer="none",
      description=description,
      cost_is_estimated=cost_is_estimated,
  )
  return table.validate()


def format_ok_rates(table: RoutingTable) -> dict[str, float]:
  """Mean format_ok per dataset (over logged outcomes), for reports."""
  rates = {}
  for d, dname in enumerate(table.dataset_names):
    rows = table.dataset_ids == d
    m = table.outcome_mask[rows]
    rates[dname] = float(table.format_ok[rows][m].mean()) if m.any() else float("nan")
  return rates


__all__ = [
    "CHARS_PER_TOKEN", "DIRECT", "FORMAT_RULES", "SPLIT_FRACTIONS",
    "as_bool_text", "as_count", "as_price", "as_score", "assemble_table",
    "call_cost", "choice_labels", "code_ok", "estimate_tokens",
    "final_number_ok", "format_ok_for_metric", "format_ok_rates", "literal",
    "load_prices", "multiple_choice_ok", "nonempty_ok", "read_csv_rows",
    "read_json", "read_jsonl", "require", "require_str", "where",
]
