r"""Wall time of the seven-dataset ReCal run to its best validation accuracy.

Runs `recal_jax.train.train_and_evaluate` with
`experiments/configs/seven_datasets.py` (real LLMRouter logs from
../shared/routing_data, hashing text features; skipped with a message if the
logs are absent) in a fresh temporary work dir, in this process, and times it.

How the times are measured: the library is not modified; this script wraps
(in this process only, delegating unchanged) a few of its functions with a
clock: `train.load_data` (table loading + featurising),
`StepFunctions.train_chunk` (each chunk of steps fused under `lax.scan`,
one dispatch; the wrapper blocks on the chunk's outputs, which the training
loop does right after anyway), `Evaluator.__call__` (each greedy
evaluation), `Checkpointer.save`, and `MetricsWriter.write_scalars` (the wall time at which each
validation result was written to `metrics.jsonl`). t = 0 is the call to
`train_and_evaluate` (after imports); the interpreter start and imports are
reported apart (process start from /proc/self/stat).
"Time to best" for an evaluation step s is the recorded write time of its
validation metrics. As a cross-check the script also gives the estimate
startup + s * (mean step time) + (evaluations so far) * (mean evaluation
time) from the same clocks.

Reported: total wall time (imports, data, the run), startup (t = 0 to the
first chunk), compile (first chunk - its length x the median step time of
the other chunks), steps
and time to the best validation accuracy and to the checkpoint the run keeps
(best `validation/reward`, the config's `best_metric`), and the kept router's
validation / test accuracy and cost next to the best single model.

  python -m experiments.benchmarks.end_to_end
  python -m experiments.benchmarks.end_to_end --seed=1

Prints markdown tables and writes the "## End to end" section of
experiments/benchmarks/RESULTS.md (only that section is replaced).
"""

from __future__ import annotations

import time

_IMPORT_START = time.perf_counter()

# pylint: disable=g-import-not-at-top,wrong-import-position
import argparse
import dataclasses
import functools
import json
import os
import shutil
import statistics
import tempfile

from experiments.benchmarks import common

SECTION = "## End to end"


def seconds_since_process_start() -> float:
  """Wall time since this process started (/proc/self/stat vs /proc/uptime)."""
  try:
    start_ticks = int(open("/proc/self/stat").read().rsplit(")", 1)[1].split()[19])
    uptime = float(open("/proc/uptime").read().split()[0])
    return uptime - start_ticks / os.sysconf("SC_CLK_TCK")
  except (OSError, ValueError, IndexError):
    return float("nan")
TARGET_S = 180.0


class Clock:
  """Collects (label, start, duration) records relative to `t0`."""

  def __init__(self):
    self.t0 = None
    self.events: dict[str, list[tuple[float, float]]] = {}
    self.eval_writes: list[tuple[int, float, dict]] = []
    self.chunk_lengths: list[int] = []

  def now(self) -> float:
    return time.perf_counter() - self.t0

  def timed(self, label: str, fn, block=None):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
      start = time.perf_counter()
      out = fn(*args, **kwargs)
      if block is not None:
        block(out)
      end = time.perf_counter()
      self.events.setdefault(label, []).append((start - self.t0, end - start))
      return out
    return wrapper

  def durations(self, label: str) -> list[float]:
    return [d for _, d in self.events.get(label, [])]


def instrument(clock: Clock):
  """Wraps library functions with `clock`; returns an undo function."""
  import jax
  from recal_jax import checkpointing, metrics_writer
  from recal_jax.training import evaluation, learner, loop

  saved = []

  def patch(owner, name, new):
    saved.append((owner, name, getattr(owner, name)))
    setattr(owner, name, new)

  patch(loop, "load_data", clock.timed("load_data", loop.load_data))
  patch(loop.outcome_lib, "fit", clock.timed("outcome_fit", loop.outcome_lib.fit))

  original_make = learner.make_step_functions

  def make_step_functions(*args, **kwargs):
    fns = original_make(*args, **kwargs)
    chunk = clock.timed("train_chunk", fns.train_chunk, jax.block_until_ready)

    def train_chunk(state, indices):
      clock.chunk_lengths.append(int(indices.shape[0]))
      return chunk(state, indices)
    return dataclasses.replace(fns, train_chunk=train_chunk)

  patch(learner, "make_step_functions", make_step_functions)
  patch(evaluation.Evaluator, "__call__", clock.timed("evaluate", evaluation.Evaluator.__call__))
  patch(checkpointing.Checkpointer, "save",
        clock.timed("checkpoint", checkpointing.Checkpointer.save))
  original_write = metrics_writer.MetricsWriter.write_scalars

  def write_scalars(self, step, scalars):
    out = original_write(self, step, scalars)
    if "validation/accuracy" in scalars:
      clock.eval_writes.append((int(step), clock.now(), dict(scalars)))
    return out

  patch(metrics_writer.MetricsWriter, "write_scalars", write_scalars)

  def undo():
    for owner, name, value in reversed(saved):
      setattr(owner, name, value)
  return undo


def data_available(config) -> tuple[bool, str]:
  from recal_jax.data import builders, real
  manual_dir = config.data.manual_dir or real.default_manual_dir()
  subdir = builders.REGISTRY[config.data.name][0]
  folder = os.path.join(manual_dir, subdir)
  return os.path.isdir(folder), folder


def read_metrics(workdir: str) -> dict[int, dict]:
  """metrics.jsonl -> {step: merged record} (the last record of a step wins)."""
  out: dict[int, dict] = {}
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      record = json.loads(line)
      out.setdefault(record["step"], {}).update(record)
  return out


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--seed", type=int, default=0, help="config.seed and config.data.seed")
  parser.add_argument("--keep_workdir", action="store_true")
  parser.add_argument("--write", action=argparse.BooleanOptionalAction, default=True,
                      help="write the '## End to end' section of RESULTS.md")
  args = parser.parse_args(argv)
  command = common.command_line("experiments.benchmarks.end_to_end", argv)

  from absl import logging as absl_logging
  from experiments.configs import seven_datasets
  from recal_jax import train
  import_s = time.perf_counter() - _IMPORT_START
  interpreter_s = seconds_since_process_start() - import_s

  config = seven_datasets.get_config()
  config.seed = args.seed
  config.data.seed = args.seed
  ok, folder = data_available(config)
  if not ok:
    print(f"SKIPPED: the seven-dataset logs are not at {folder} (set RECAL_ROUTING_DATA "
          "or put the LLMRouter logs in ../shared/routing_data/llmrouter); nothing written.")
    return
  absl_logging.set_verbosity(absl_logging.WARNING)

  loads = [common.load_average()]
  workdir = tempfile.mkdtemp(prefix="recal_e2e_")
  clock = Clock()
  undo = instrument(clock)
  try:
    clock.t0 = time.perf_counter()
    result = train.train_and_evaluate(config, workdir)
    run_s = clock.now()
    process_s = seconds_since_process_start()
  finally:
    undo()
  loads.append(common.load_average())
  metrics = read_metrics(workdir)
  if not args.keep_workdir:
    shutil.rmtree(workdir, ignore_errors=True)
  else:
    print(f"workdir kept: {workdir}")

  chunks = clock.events["train_chunk"]
  lengths = clock.chunk_lengths
  chunk_times = [d for _, d in chunks]
  first_step_start = chunks[0][0]
  per_step = [d / k for d, k in zip(chunk_times[1:], lengths[1:])]
  median_step = statistics.median(per_step)
  mean_step = sum(chunk_times[1:]) / sum(lengths[1:])
  compile_s = chunk_times[0] - lengths[0] * median_step
  evals = clock.durations("evaluate")
  num_steps = sum(lengths)
  eval_steps = [(s, t) for s, t, _ in clock.eval_writes]
  # Each step's validation statistics from metrics.jsonl; times from the clock.
  write_time = {s: t for s, t in eval_steps}
  validation = sorted((s, r) for s, r in metrics.items() if "validation/accuracy" in r)
  best_acc_step, best_acc = max(((s, r["validation/accuracy"]) for s, r in validation),
                                key=lambda x: (x[1], -x[0]))
  kept_step = int(result["best_step"])
  best_metric = config.best_metric

  to_best = process_s - run_s + write_time[best_acc_step]
  mean_eval = statistics.mean(evals[1:1 + num_steps // config.eval_every_steps])

  def estimate(step: int) -> float:
    """startup + step * mean step time + evaluations done * mean eval time."""
    done = sum(1 for s, _ in eval_steps if 0 < s <= step)
    return (first_step_start + chunk_times[0] + (step - lengths[0]) * mean_step
            + done * mean_eval)

  summary_header = ["quantity", "value"]
  summary_rows = [
      ["imports (jax, flax, recal_jax, ...)", f"{import_s:.1f} s"],
      ["data: load + featurise (`load_data`)", f"{sum(clock.durations('load_data')):.1f} s"],
      ["outcome model fit (`outcome_model.fit`)", f"{sum(clock.durations('outcome_fit')):.2f} s"],
      ["step-0 evaluation (greedy compile) + step-0 checkpoint",
       f"{evals[0]:.2f} s + {clock.durations('checkpoint')[0]:.2f} s"],
      ["startup: t=0 to first chunk (data, policy init jit, outcome model, "
       "Orbax / TensorBoard setup, step-0 eval + checkpoint)", f"{first_step_start:.1f} s"],
      [f"first chunk ({lengths[0]} steps: trace + compile + run)", f"{chunk_times[0]:.2f} s"],
      ["compile = first chunk - its steps x median step", f"{compile_s:.2f} s"],
      [f"train steps ({num_steps} x {config.batch_size} x {config.group_size} rollouts, "
       f"{len(chunks)} chunks)",
       f"{sum(chunk_times):.1f} s (median {median_step * 1e3:.1f} ms, mean "
       f"{mean_step * 1e3:.1f} ms, {config.batch_size * config.group_size / median_step / 1e3:.0f} k rollouts/s)"],
      [f"evaluations ({len(evals)}, greedy on validation / test)",
       f"{sum(evals):.1f} s (first {evals[0]:.2f} s, median {statistics.median(evals) * 1e3:.0f} ms)"],
      [f"checkpoints ({len(clock.durations('checkpoint'))} saves)",
       f"{sum(clock.durations('checkpoint')):.1f} s"],
      ["run (`train_and_evaluate`, t=0 to return)", f"{run_s:.1f} s"],
      ["**total wall time (process start to end of run)**",
       f"**{process_s:.1f} s** (interpreter start {interpreter_s:.1f} s + imports "
       f"{import_s:.1f} s + run {run_s:.1f} s)"],
      [f"best validation accuracy (first step reaching it)",
       f"{best_acc:.4f} at step {best_acc_step}: t = {write_time[best_acc_step]:.1f} s "
       f"(since process start: {to_best:.1f} s); estimate "
       f"{estimate(best_acc_step):.1f} s"],
      [f"kept checkpoint (best `{best_metric}`)",
       f"step {kept_step}: t = {write_time.get(kept_step, float('nan')):.1f} s; "
       f"estimate {estimate(kept_step):.1f} s"],
      [f"target: best validation accuracy < {TARGET_S:.0f} s since process start",
       ("met" if to_best < TARGET_S else "NOT met") + f" ({to_best:.1f} s)"],
  ]
  summary_md = common.markdown_table(summary_header, summary_rows)

  kept = metrics.get(kept_step, {})
  best_row = metrics[best_acc_step]
  quality_header = ["policy", "validation accuracy", "validation cost (USD / query)",
                    "test accuracy", "test cost (USD / query)"]
  fmt = lambda v: "n/a" if v is None else (f"{v:.4f}" if v > 1e-2 else f"{v:.3g}")
  quality_rows = [
      [f"router, kept checkpoint (step {kept_step}, best {best_metric})",
       fmt(result.get("router/validation/accuracy")), fmt(result.get("router/validation/cost")),
       fmt(result.get("router/test/accuracy")), fmt(result.get("router/test/cost"))],
      [f"router at best validation accuracy (step {best_acc_step})",
       fmt(best_row.get("validation/accuracy")), fmt(best_row.get("validation/cost")),
       "-", "-"],
      [f"router, last step ({result['step']})",
       fmt(result.get("final/validation/accuracy")), fmt(result.get("final/validation/cost")),
       fmt(result.get("final/test/accuracy")), fmt(result.get("final/test/cost"))],
      [f"best single model ({result.get('best_single_arm')}, chosen on train)",
       fmt(result.get("best_single/validation/accuracy")),
       fmt(result.get("best_single/validation/cost")),
       fmt(result.get("best_single/test/accuracy")), fmt(result.get("best_single/test/cost"))],
      ["per-query oracle", fmt(result.get("oracle/validation/accuracy")),
       fmt(result.get("oracle/validation/cost")), fmt(result.get("oracle/test/accuracy")),
       fmt(result.get("oracle/test/cost"))],
  ]
  del kept
  quality_md = common.markdown_table(quality_header, quality_rows)

  curve_header = ["step", "t (s)", "validation accuracy", "validation cost", "validation reward"]
  curve_rows = [[s, f"{write_time.get(s, float('nan')):.1f}",
                 f"{r['validation/accuracy']:.4f}", f"{r['validation/cost']:.3g}",
                 f"{r['validation/reward']:.4f}"] for s, r in validation]
  curve_md = common.markdown_table(curve_header, curve_rows)
  print(summary_md + "\n\n" + quality_md + "\n\n" + curve_md)

  wall = time.perf_counter() - _IMPORT_START
  text = "\n".join([
      SECTION, "",
      common.header_line("end_to_end.py", loads, wall), "",
      f"Command: `{command}`", "",
      "`train_and_evaluate` with `experiments/configs/seven_datasets.py` "
      f"(seed {args.seed}: {config.num_train_steps} steps of {config.batch_size} x "
      f"{config.group_size} rollouts, categorical router, hashing features, eval every "
      f"{config.eval_every_steps} steps, checkpoint every {config.checkpoint_every_steps}) "
      "in a fresh temp work dir, in the benchmark process. Times come from clocks "
      "wrapped (in this process only, delegating unchanged) around `train.load_data`, "
      "each `train_chunk` (K steps under `lax.scan`, one dispatch; blocking on its "
      "outputs, as the loop does next anyway), "
      "`Evaluator.__call__`, `Checkpointer.save`, and "
      "`MetricsWriter.write_scalars` (t of each validation record written to "
      "`metrics.jsonl`). t = 0 is the call to `train_and_evaluate`; the interpreter "
      "start and imports before it are reported apart (process start time from "
      "`/proc/self/stat`), and 'since process start' adds them. 'estimate' = startup + first step + (s - 1) x mean step + "
      "evaluations so far x mean evaluation (the method that needs only the "
      "step timings).", "",
      summary_md, "",
      quality_md, "",
      "Validation curve (t = when the evaluation was written):", "",
      curve_md, ""])
  if args.write:
    common.write_section(SECTION, text)
    print(f"wrote {common.RESULTS_FILE}")


if __name__ == "__main__":
  main()
