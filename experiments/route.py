r"""Route queries from a JSONL file with a trained router.

  python -m experiments.route --workdir=/tmp/recal_quick --queries=queries.jsonl \
      [--budget=0.001 | --cost_weight=300] [--checkpoint=best] [--out=routes.jsonl]

Each input line is a JSON object with `query` (text; featurised like the
training data) or `features` (a list of D numbers), and optionally `query_id`
and `dataset` (needed by routers trained with the dataset id, the `+id`
routers of `experiments.compare`); any other field is an error for that line.
Each output line (stdout, or --out) is the input's `query_id` (or its line
number) with the chosen `model`, `strategy`, `arm`, `probability`,
`predicted_score`, `expected_cost_usd` and, with --probabilities, every arm's
probability. A short summary (arm counts, mean expected cost) goes to stderr.

A line that cannot be read is reported on stderr with its line number and the
others are still routed; the exit status is then 1. Bad flags (`--checkpoint`
not 'best' / 'latest' / a step, a negative or non-finite `--budget` or
`--cost_weight`, both of them) are refused once, before the router loads; an
empty file, a missing file or work dir, or a work dir without a checkpoint
stop with one line too (exit status 2).
"""

from __future__ import annotations

import collections
import difflib
import json
import sys

import math

from absl import flags

from experiments import cli


def define_flags():
  """Defined only when run as a program: importing this module defines none."""
  flags.DEFINE_string("workdir", None, "Training work dir of the router.", required=True)
  flags.DEFINE_string("queries", None, "JSONL file of queries ('-' for stdin).", required=True)
  flags.DEFINE_string("out", "", "Output JSONL file (default: stdout).")
  flags.DEFINE_string("checkpoint", "best", "'best', 'latest' or a step number.")
  flags.DEFINE_float("budget", None, "Average USD per query to stay within.")
  flags.DEFINE_float("cost_weight", None, "Trade-off in nats per USD (instead of --budget).")
  flags.DEFINE_bool("probabilities", False, "Write every arm's probability.")
  flags.DEFINE_integer("batch_size", 4096, "Queries routed per batch.")


FLAGS = flags.FLAGS


QUERY_FIELDS = ("query", "features", "query_id", "dataset")


class QueryFileError(ValueError):
  """The query file as a whole cannot be used."""


def read_queries(path: str):
  """-> (items [(line, query_id, text or None, features or None, dataset or None)],
  errors [(line, msg)])."""
  try:
    handle = sys.stdin if path == "-" else open(path, encoding="utf-8")
  except OSError as e:
    raise QueryFileError(f"cannot open query file {path}: {e}") from e
  items, errors = [], []
  with handle:
    for line_number, line in enumerate(handle, 1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        errors.append((line_number, f"bad JSON: {e.msg}"))
        continue
      if not isinstance(record, dict):
        errors.append((line_number, "a line must be a JSON object"))
        continue
      unknown = sorted(set(record) - set(QUERY_FIELDS))
      if unknown:  # as the training data does: a misspelt field is not silently ignored
        close = difflib.get_close_matches(unknown[0], QUERY_FIELDS, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        errors.append((line_number, f"unknown field '{unknown[0]}'{hint} (known fields: "
                       + ", ".join(f"'{k}'" for k in QUERY_FIELDS) + ")"))
        continue
      text, features = record.get("query"), record.get("features")
      if (text is None) == (features is None):
        errors.append((line_number, "give exactly one of the fields 'query' and 'features'"))
        continue
      if text is not None and not isinstance(text, str):
        errors.append((line_number, "field 'query' must be a string"))
        continue
      if features is not None and not (isinstance(features, list) and
                                       all(isinstance(v, (int, float)) for v in features)):
        errors.append((line_number, "field 'features' must be a list of numbers"))
        continue
      dataset = record.get("dataset")
      if dataset is not None and not isinstance(dataset, str):
        errors.append((line_number, "field 'dataset' must be a string"))
        continue
      items.append((line_number, record.get("query_id", line_number), text, features, dataset))
  if not items and not errors:
    raise QueryFileError(f"query file {path} has no queries")
  return items, errors


def route_items(router, items, *, budget=None, cost_weight=None, probabilities=False,
                batch_size=4096):
  """Routes items in batches; -> (records [(line, dict)], errors [(line, msg)])."""
  records, errors = [], []
  by_kind = collections.defaultdict(list)
  for item in items:
    by_kind["text" if item[2] is not None else "features"].append(item)
  for kind, group in by_kind.items():
    for start in range(0, len(group), batch_size):
      chunk = group[start:start + batch_size]
      inputs = [it[2] if kind == "text" else it[3] for it in chunk]
      datasets = [it[4] for it in chunk] if any(it[4] is not None for it in chunk) else None
      try:
        result = router.route(inputs, budget=budget, cost_weight=cost_weight, datasets=datasets)
      except ValueError as e:
        if len(chunk) == 1:
          errors.append((chunk[0][0], str(e)))
          continue
        # Find the bad lines one by one; the good ones still get routed.
        sub_records, sub_errors = [], []
        for it in chunk:
          r, e2 = route_items(router, [it], budget=budget, cost_weight=cost_weight,
                              probabilities=probabilities)
          sub_records += r
          sub_errors += e2
        records += sub_records
        errors += sub_errors
        continue
      arm_names = router.arm_names if probabilities else None
      for it, record in zip(chunk, result.records(arm_names)):
        records.append((it[0], {"query_id": it[1], **record}))
  records.sort(key=lambda r: r[0])
  return records, errors


def check_flags(checkpoint: str, budget, cost_weight, batch_size: int) -> str | int:
  """Checks the routing flags once, before anything loads; -> the checkpoint to load."""
  if budget is not None and cost_weight is not None:
    raise cli.ConfigError("give --budget or --cost_weight, not both")
  for name, value in (("budget", budget), ("cost_weight", cost_weight)):
    if value is not None and not (math.isfinite(value) and value >= 0):
      raise cli.ConfigError(f"--{name}={value}: must be a finite number >= 0"
                            + (" (USD per query)" if name == "budget" else " (nats per USD)"))
  if batch_size < 1:
    raise cli.ConfigError(f"--batch_size={batch_size}: must be >= 1")
  if checkpoint in ("best", "latest"):
    return checkpoint
  if checkpoint.isdigit():
    return int(checkpoint)
  raise cli.ConfigError(f"--checkpoint={checkpoint}: must be 'best', 'latest' or a step number")


def main(argv):
  if len(argv) > 1:
    raise cli.ConfigError(f"unexpected arguments {argv[1:]} (flags are --name=value)")
  checkpoint = check_flags(FLAGS.checkpoint, FLAGS.budget, FLAGS.cost_weight, FLAGS.batch_size)
  from recal_jax import router as router_lib  # pylint: disable=import-outside-toplevel
  from recal_jax.training import console  # pylint: disable=import-outside-toplevel
  console.quiet_third_party_logs()  # Orbax / JAX INFO lines only at --verbosity=1
  try:
    items, errors = read_queries(FLAGS.queries)
    router = router_lib.Router.load(FLAGS.workdir, checkpoint=checkpoint)
  except (QueryFileError, FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  records, route_errors = route_items(
      router, items, budget=FLAGS.budget, cost_weight=FLAGS.cost_weight,
      probabilities=FLAGS.probabilities, batch_size=FLAGS.batch_size)
  errors = sorted(errors + route_errors)
  out = open(FLAGS.out, "w", encoding="utf-8") if FLAGS.out else sys.stdout
  try:
    for _, record in records:
      out.write(router_lib.dumps(record) + "\n")
  finally:
    if FLAGS.out:
      out.close()
  for line_number, message in errors:
    print(f"{FLAGS.queries}:{line_number}: {message}", file=sys.stderr)
  counts = collections.Counter(f"{r['model']}|{r['strategy']}" for _, r in records)
  mean_cost = (sum(r["expected_cost_usd"] for _, r in records) / len(records)) if records else 0.0
  print(f"routed {len(records)} queries ({len(errors)} failed); mean expected cost "
        f"{mean_cost:.3g} USD; arms: " +
        ", ".join(f"{k} {v}" for k, v in counts.most_common()), file=sys.stderr)
  return 1 if errors else 0


if __name__ == "__main__":
  define_flags()
  cli.run(main)
