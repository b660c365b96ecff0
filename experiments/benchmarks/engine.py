r"""The training engine: the main job's wall time, and fused vs per-step steps.

1. Main job: `python -m experiments.train --config=experiments/configs/quick.py
   --workdir=<fresh tmp dir>` run as a subprocess `--repeats` times (process
   start to exit, compilation included: no persistent cache). With
   `--baseline_tree=DIR` (e.g. `git archive ebc1891 | tar -x -C DIR`) the same
   command also runs from that tree, alternating with this one, so both see
   the same machine load.
2. Steps: the default config (synthetic table, categorical router, B=128,
   G=8), `--steps` steps either as one `train_chunk` (K steps under
   `lax.scan`, one dispatch) or as K `train_step` calls each followed by
   `jax.device_get(metrics)` (the loop before the engine change); first call
   (compile) reported apart, then the median of `--repeats` timed calls.

  python -m experiments.benchmarks.engine
  python -m experiments.benchmarks.engine --baseline_tree=/tmp/old --repeats=3

Prints markdown tables and writes the "## Engine" section of RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

from experiments.benchmarks import common

SECTION = "## Engine"
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MAIN_JOB = "python -m experiments.train --config=experiments/configs/quick.py --workdir=<tmp>"


def time_main_job(tree: str) -> float:
  """Wall seconds of the main job run from `tree` (a fresh work dir)."""
  with tempfile.TemporaryDirectory() as workdir:
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.train",
         "--config=experiments/configs/quick.py", f"--workdir={workdir}"],
        cwd=tree, capture_output=True, text=True,
        env=dict(os.environ, JAX_PLATFORMS="cpu"))
    seconds = time.perf_counter() - start
  if proc.returncode:
    raise RuntimeError(f"main job failed in {tree}: {proc.stderr[-2000:]}")
  return seconds


def time_steps(num_steps: int, repeats: int) -> dict[str, float]:
  """Seconds per step: one chunk of `num_steps` vs per-step dispatch + sync."""
  import functools  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  from experiments.configs import default  # pylint: disable=import-outside-toplevel
  from recal_jax import policies, rollout, train  # pylint: disable=import-outside-toplevel
  from recal_jax.data import synthetic  # pylint: disable=import-outside-toplevel

  config = default.get_config()
  table = synthetic.make_synthetic(config.data.num_queries, seed=0,
                                   feature_dim=config.data.feature_dim)
  train_table = table.subset("train")
  mesh = train.make_mesh(1)
  policy = policies.make_policy(config.policy, table)
  tx = train.make_optimizer(config)
  fns = train.make_step_functions(
      policy, tx, train.method_from_config(config), config,
      table=rollout.device_table(train_table, jax.sharding.NamedSharding(
          mesh, jax.sharding.PartitionSpec())),
      num_datasets=table.num_datasets, mesh=mesh)
  init = jax.jit(functools.partial(train.init_state, policy, tx,
                                   feature_dim=table.feature_dim,
                                   num_datasets=table.num_datasets))
  sampler = train.QuerySampler(train_table.num_queries, config.batch_size, 0)
  indices = sampler.chunk(0, num_steps)

  def chunked():
    state = init(jax.random.key(0))
    start = time.perf_counter()
    state, metrics = fns.train_chunk(state, train.global_batch(indices, fns.chunk_sharding))
    jax.device_get(metrics)
    return time.perf_counter() - start

  def per_step():
    state = init(jax.random.key(0))
    start = time.perf_counter()
    for k in range(num_steps):
      state, metrics = fns.train_step(state, train.global_batch(indices[k], fns.batch_sharding))
      jax.device_get(metrics)
    return time.perf_counter() - start

  out = {"chunk_first": chunked(), "steps_first": per_step()}
  chunk_times, step_times = [], []
  for _ in range(repeats):  # alternating, same load
    chunk_times.append(chunked())
    step_times.append(per_step())
  out["chunk"] = statistics.median(chunk_times) / num_steps
  out["steps"] = statistics.median(step_times) / num_steps
  out["rollouts"] = config.batch_size * config.group_size
  return out


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--steps", type=int, default=25)
  parser.add_argument("--baseline_tree", default="",
                      help="a checkout of the code before the engine change")
  parser.add_argument("--main_job", action=argparse.BooleanOptionalAction, default=True,
                      help="time the main job (--no-main_job: only the step throughput)")
  parser.add_argument("--write", action=argparse.BooleanOptionalAction, default=True)
  args = parser.parse_args(argv)
  command = common.command_line("experiments.benchmarks.engine", argv)
  started = time.perf_counter()
  loads = [common.load_average()]

  trees = [("this tree", REPO)] + ([("baseline", args.baseline_tree)]
                                   if args.baseline_tree else [])
  wall = {name: [] for name, _ in trees}
  for _ in range(args.repeats if args.main_job else 0):
    for name, tree in trees:
      wall[name].append(time_main_job(tree))
  job_rows = [[name, f"{statistics.median(t):.1f} s", ", ".join(f"{x:.1f}" for x in t)]
              for name, t in wall.items() if t]
  job_md = (common.markdown_table(["code", "median wall time", "runs (s)"], job_rows)
            if job_rows else "(not run: --no-main_job)")

  steps = time_steps(args.steps, args.repeats)
  step_rows = [
      [f"one `train_chunk` of {args.steps} steps (lax.scan)", f"{steps['chunk'] * 1e3:.1f} ms",
       f"{steps['rollouts'] / steps['chunk'] / 1e3:.0f} k", f"{steps['chunk_first']:.1f} s"],
      [f"{args.steps} x `train_step` + `device_get`", f"{steps['steps'] * 1e3:.1f} ms",
       f"{steps['rollouts'] / steps['steps'] / 1e3:.0f} k", f"{steps['steps_first']:.1f} s"]]
  step_md = common.markdown_table(
      ["dispatch", "median time / step", "rollouts / s", "first call (compile + run)"],
      step_rows)
  print(job_md + "\n\n" + step_md)
  loads.append(common.load_average())
  text = "\n".join([
      SECTION, "", common.header_line("engine.py", loads, time.perf_counter() - started), "",
      f"Command: `{command}`", "",
      f"Main job `{MAIN_JOB}` (subprocess, process start to exit, no compilation cache; "
      "trees alternate):", "", job_md, "",
      "Train step throughput, default config (B=128, G=8, categorical, 1 device):", "",
      step_md, ""])
  if args.write:
    common.write_section(SECTION, text)
    print(f"wrote {common.RESULTS_FILE}")


if __name__ == "__main__":
  main()
