r"""Benchmarks `MiniLMFeaturizer` on short queries: compile time and queries/s.

Embeds N deterministic short queries (8-20 words each, from a fixed word list
and seed), first cold (includes tokeniser + weight loading + XLA compiles),
then `--repeats` warm runs, and prints:

  load_s      weight + tokenizer loading
  cold_s      first call (compiles every shape it meets)
  steady_s    median warm call, N queries (and its process CPU seconds)
  queries/s   N / steady_s

and appends a row to experiments/benchmarks/RESULTS_featurize.md (date,
machine, command), writing the table header if the file is new.

  python experiments/benchmarks/featurize.py
  python experiments/benchmarks/featurize.py --num_queries=1000 \
      --batch_size=64 --buckets=16,32,64,128,256 --repeats=5
"""

from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import shlex
import statistics
import sys
import time

import numpy as np

_WORDS = (
    "what how why which when where who is are the a an of to in for on with "
    "by from and or not best cheapest fastest model answer question solve "
    "explain compute prove translate summarize write code function python "
    "list sort integer prime number equation derivative integral matrix "
    "probability graph shortest path capital country history poem story "
    "essay french german sentence grammar meaning word definition example "
    "chemistry physics energy mass velocity force cell protein gene law "
    "contract tax price cost budget market stock interest rate loan").split()

RESULTS_FILE = pathlib.Path(__file__).resolve().parent / "RESULTS_featurize.md"
_HEADER = (
    "# Featurizer benchmark (MiniLMFeaturizer, all-MiniLM-L6-v2 in JAX)\n\n"
    "Written by `experiments/benchmarks/featurize.py`; one row per run. "
    "cold = first call (XLA compiles included), steady = median warm call.\n\n"
    "loadavg = 1-minute load average before the run (other processes "
    "sharing the cores slow it down).\n\n"
    "| date | machine | loadavg | command | queries | batch | buckets | "
    "load s | cold s | steady s | steady CPU s | queries/s |\n"
    "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- "
    "|\n")


def make_queries(num_queries: int, seed: int = 0) -> list[str]:
  """Deterministic pseudo-queries of 8-20 words ending in '?'."""
  rng = np.random.default_rng(seed)
  queries = []
  for i in range(num_queries):
    num_words = int(rng.integers(8, 21))
    words = [_WORDS[j] for j in rng.integers(0, len(_WORDS), num_words)]
    queries.append(f"{' '.join(words)} {i}?")
  return queries


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--num_queries", type=int, default=1000)
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--buckets", default=None,
                      help="comma-separated padded lengths (default: the "
                      "featurizer's DEFAULT_LENGTH_BUCKETS)")
  parser.add_argument("--max_length", type=int, default=256)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--no_write", action="store_true",
                      help="print only; do not append to RESULTS_featurize.md")
  args = parser.parse_args(argv)

  # Imported here so --help works without the model installed.
  try:
    from recal_jax.data import minilm  # pylint: disable=g-import-not-at-top
  except ImportError:  # Run as a script from a checkout, not installed.
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
    from recal_jax.data import minilm  # pylint: disable=g-import-not-at-top
  from experiments.benchmarks.common import machine_description  # pylint: disable=g-import-not-at-top

  load_average = os.getloadavg()[0]
  queries = make_queries(args.num_queries)
  buckets = (tuple(int(b) for b in args.buckets.split(",")) if args.buckets
             else minilm.DEFAULT_LENGTH_BUCKETS)
  featurizer = minilm.MiniLMFeaturizer(
      batch_size=args.batch_size, max_length=args.max_length,
      length_buckets=buckets)

  start = time.perf_counter()
  _ = featurizer.params, featurizer.tokenizer
  load_s = time.perf_counter() - start

  token_counts = [len(ids) for ids in featurizer.tokenize(queries)]
  start = time.perf_counter()
  cold = featurizer(queries)
  cold_s = time.perf_counter() - start

  warm_times, warm_cpu_times = [], []
  for _ in range(args.repeats):
    start, start_cpu = time.perf_counter(), time.process_time()
    warm = featurizer(queries)
    warm_times.append(time.perf_counter() - start)
    warm_cpu_times.append(time.process_time() - start_cpu)
  steady_s = statistics.median(warm_times)
  steady_cpu_s = statistics.median(warm_cpu_times)
  queries_per_s = args.num_queries / steady_s
  max_diff = float(np.abs(cold - warm).max())

  command = "python " + " ".join(
      shlex.quote(a) for a in [sys.argv[0]] + (argv or sys.argv[1:]))
  niceness = os.nice(0)
  if niceness:  # e.g. run at high priority on a shared machine.
    command = f"nice -n {niceness} {command}"
  machine = machine_description()
  print(f"machine    {machine}, loadavg before run {load_average:.2f}")
  print(f"queries    {args.num_queries} (tokens min/mean/max "
        f"{min(token_counts)}/{np.mean(token_counts):.1f}/{max(token_counts)})")
  print(f"batch      {args.batch_size}, buckets {featurizer.length_buckets}")
  print(f"load_s     {load_s:.2f}")
  print(f"cold_s     {cold_s:.2f}  (first call, compiles included)")
  print(f"steady_s   {steady_s:.3f}  (median of "
        f"{[round(t, 3) for t in warm_times]}; CPU s {steady_cpu_s:.2f})")
  print(f"queries/s  {queries_per_s:.0f}")
  print(f"cold vs warm max |diff| {max_diff:.2e}")

  if not args.no_write:
    row = (f"| {datetime.date.today().isoformat()} | {machine} | "
           f"{load_average:.2f} | `{command}` | "
           f"{args.num_queries} | {args.batch_size} | "
           f"{','.join(map(str, featurizer.length_buckets))} | {load_s:.2f} | "
           f"{cold_s:.2f} | {steady_s:.3f} | {steady_cpu_s:.2f} | "
           f"{queries_per_s:.0f} |\n")
    if not RESULTS_FILE.exists():
      RESULTS_FILE.write_text(_HEADER)
    with RESULTS_FILE.open("a") as f:
      f.write(row)
    print(f"appended a row to {RESULTS_FILE}")


if __name__ == "__main__":
  main()
