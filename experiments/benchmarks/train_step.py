r"""Benchmarks the full jitted training step: rollouts/s, compile time, memory.

The step is the library's own: `train.make_step_functions(...).train_step`
(sample G routes per query from the policy, look the outcomes up in the
device table, ReCal advantages, the clipped policy loss and its gradient,
clip + AdamW), with the state from `train.init_state`, the query batches from
`train.QuerySampler` + `train.global_batch`, and the config
`experiments/configs/default.py` (ReCal, hidden dims (128, 128)) with only
`policy.kind`, `batch_size` and `group_size` changed. Table: the synthetic
one (`make_synthetic`, 4,000 queries, 2,800 train, 32 latent features,
10 arms). One device (`train.make_mesh(1)`).

For each B (queries per step; N = B * G rollouts) both routers are built, each
is called once (the first call = trace + XLA compile + one step), then timed
`--steps` times round-robin (categorical, token, categorical, ...), each step
exactly as `train_and_evaluate` runs it: query indices, `train_step`, then
`jax.device_get(metrics)` (blocks on the step). Steady = median over the
timed steps; compile ~ first call - steady. CPU = process CPU seconds
(all threads) per step: CPU / wall > 1 means XLA used both cores.

Memory (no `memory_stats()` on the CPU backend: it returns None): the peak
resident set size of this process above its RSS just before, with the
high-water mark reset in between (`echo 5 > /proc/self/clear_refs`, then
`getrusage(RUSAGE_SELF).ru_maxrss`), for the first call (compile) and for 3
steady steps run alone; plus the XLA buffer sizes of the compiled step
(`lower(...).compile().memory_analysis()`: arguments, outputs, temporaries),
its FLOPs (`cost_analysis()`) and the minor page faults per step.

At the largest B two child processes time both routers again, with glibc's
defaults and with env `MALLOC_ARENA_MAX=1 MALLOC_MMAP_MAX_=0
MALLOC_TRIM_THRESHOLD_=1073741824` (`MALLOC_ENV`): when XLA's temporary buffer
exceeds glibc's 32 MiB dynamic mmap ceiling it is mmap-ed, page-faulted in
and unmapped on every step (`--no-malloc_probe` skips this; a run-time
`mallopt(M_MMAP_MAX, 0)` after JAX started did not remove the faults here).

  python -m experiments.benchmarks.train_step
  python -m experiments.benchmarks.train_step --batch_sizes 64,256,1024 --steps 20

Prints a markdown table and writes the "## Train step" section of
experiments/benchmarks/RESULTS.md (only that section is replaced).
"""

from __future__ import annotations

import argparse
import functools
import os
import pathlib
import resource
import statistics
import sys
import time

from experiments.benchmarks.common import (  # noqa: E402
    RESULTS_FILE, command_line, header_line, load_average, markdown_table, write_section)

SECTION = "## Train step"
# glibc: one arena (XLA's worker threads otherwise use per-thread arenas whose
# heaps are capped at 64 MiB, so bigger buffers are mmap-ed regardless), never
# mmap a chunk, never give the heap top back (1 GiB trim threshold).
MALLOC_ENV = {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_MAX_": "0",
              "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}


def rss_mb() -> float:
  """Current resident set size (VmRSS), MB."""
  for line in pathlib.Path("/proc/self/status").read_text().splitlines():
    if line.startswith("VmRSS:"):
      return int(line.split()[1]) / 1024
  return float("nan")


def reset_peak_rss() -> bool:
  """Resets the RSS high-water mark (Linux >= 4.0); False if not possible."""
  try:
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")
    return True
  except OSError:
    return False


def peak_rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class PeakRSS:
  """`with PeakRSS() as p: ...` -> p.delta_mb = peak RSS during the block - RSS before."""

  def __enter__(self):
    self.ok = reset_peak_rss()
    self.before = rss_mb()
    return self

  def __exit__(self, *exc):
    self.delta_mb = (peak_rss_mb() - self.before) if self.ok else float("nan")
    return False


# ------------------------------------------------------------- the bench
class StepRunner:
  """One router's training step, built and run exactly like `train_and_evaluate`."""

  def __init__(self, kind: str, batch_size: int, group_size: int, table, mesh):
    import jax  # pylint: disable=import-outside-toplevel
    from jax.sharding import NamedSharding, PartitionSpec  # pylint: disable=import-outside-toplevel
    from experiments.configs import default  # pylint: disable=import-outside-toplevel
    from recal_jax import policies, train  # pylint: disable=import-outside-toplevel
    from recal_jax import rollout as rollout_lib  # pylint: disable=import-outside-toplevel

    self.jax, self.train = jax, train
    config = default.get_config()
    config.policy.kind = kind
    config.batch_size = batch_size
    config.group_size = group_size
    self.kind, self.batch_size, self.group_size = kind, batch_size, group_size
    train_table = table.subset("train")
    policy = policies.make_policy(config.policy, table)
    method = train.method_from_config(config)
    tx = train.make_optimizer(config)
    replicated = NamedSharding(mesh, PartitionSpec())
    device_train = rollout_lib.device_table(train_table, replicated)
    self.fns = train.make_step_functions(policy, tx, method, config, table=device_train,
                                         num_datasets=table.num_datasets, mesh=mesh)
    init_fn = jax.jit(functools.partial(
        train.init_state, policy, tx, feature_dim=table.feature_dim,
        num_datasets=table.num_datasets), out_shardings=replicated)
    self.state = init_fn(jax.random.fold_in(jax.random.key(config.seed), 0))
    jax.block_until_ready(self.state)
    self.num_params = sum(x.size for x in jax.tree.leaves(self.state.params))
    self.sampler = train.QuerySampler(train_table.num_queries, batch_size, int(config.seed))
    self.step_index = 0
    self.device_train = device_train

  def step(self) -> tuple[float, float]:
    """One training step as the training loop runs it -> (wall s, CPU s)."""
    t0, c0 = time.perf_counter(), time.process_time()
    indices = self.train.global_batch(self.sampler.indices(self.step_index),
                                      self.fns.batch_sharding)
    self.state, metrics = self.fns.train_step(self.state, indices)
    metrics = {k: float(v) for k, v in self.jax.device_get(metrics).items()}
    self.step_index += 1
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    if not all(map(lambda v: v == v, metrics.values())):
      raise FloatingPointError(f"{self.kind} B={self.batch_size}: NaN metric")
    return wall, cpu

  def compiled_stats(self) -> dict | None:
    """Buffer sizes (MB) and FLOPs of the compiled step (None if not accessible).

    `StepFunctions.train_step` is a closure over the jitted function and the
    device table; this reads them from the closure (a `jitted` field on
    `StepFunctions` would make this cleaner). `lower(...).compile()` hits the
    compilation cache of the first call, so it costs ~30 ms.
    """
    try:
      fn = self.fns.train_step
      cells = dict(zip(fn.__code__.co_freevars, (c.cell_contents for c in fn.__closure__)))
      jitted, table = cells["jitted_train_step"], cells["table"]
      indices = self.train.global_batch(self.sampler.indices(0), self.fns.batch_sharding)
      compiled = jitted.lower(self.state, table, indices).compile()
      analysis = compiled.memory_analysis()
      cost = compiled.cost_analysis()
      cost = cost[0] if isinstance(cost, (list, tuple)) else cost
      mb = lambda b: b / 2**20
      return {"arguments": mb(analysis.argument_size_in_bytes),
              "outputs": mb(analysis.output_size_in_bytes),
              "temp": mb(analysis.temp_size_in_bytes),
              "gflop": float(cost.get("flops", float("nan"))) / 1e9,
              "gbytes": float(cost.get("bytes accessed", float("nan"))) / 1e9}
    except Exception as e:  # pylint: disable=broad-except
      print(f"  (no XLA memory / cost analysis: {type(e).__name__}: {e})", flush=True)
      return None


def time_round_robin(rows: list[dict], steps: int, prefix: str = "") -> None:
  """`steps` timed steps per runner, interleaved; appends to rows[i][prefix + ...]."""
  for row in rows:
    row[prefix + "minflt"], row[prefix + "wall"], row[prefix + "cpu"] = 0, [], []
  for _ in range(steps):
    for row in rows:
      faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
      wall, cpu = row["runner"].step()
      row[prefix + "minflt"] += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
      row[prefix + "wall"].append(wall)
      row[prefix + "cpu"].append(cpu)
  for row in rows:
    row[prefix + "minflt"] /= steps
    row[prefix + "steady_s"] = statistics.median(row[prefix + "wall"])
    row[prefix + "cpu_s"] = statistics.median(row[prefix + "cpu"])


def bench_batch(batch_size: int, args, table, mesh) -> list[dict]:
  runners = [StepRunner(kind, batch_size, args.group_size, table, mesh) for kind in args.policies]
  rows = []
  for r in runners:
    with PeakRSS() as peak:
      first, _ = r.step()
    rows.append({"runner": r, "first_s": first, "compile_rss_mb": peak.delta_mb,
                 "wall": [], "cpu": []})
  for r in runners:  # a warm-up step each (first post-compile call)
    r.step()
  time_round_robin(rows, args.steps)
  for row in rows:
    r = row["runner"]
    with PeakRSS() as peak:
      for _ in range(3):
        r.step()
    row["step_rss_mb"] = peak.delta_mb
    row["xla"] = r.compiled_stats() if args.xla_memory else None
    q = statistics.quantiles(row["wall"], n=10)
    row["p10_s"], row["p90_s"] = q[0], q[-1]
    row["rollouts"] = batch_size * args.group_size
  return rows


def malloc_probe(batch_size: int, args) -> dict:
  """Child processes at one B: glibc default vs env `MALLOC_ENV`.

  {kind: {"default": stats, "tuned": stats}}; stats = {steady_s, cpu_s,
  minflt, load}. Sequential children (default first), both routers each.
  """
  import json  # pylint: disable=import-outside-toplevel
  import subprocess  # pylint: disable=import-outside-toplevel
  out: dict = {}
  for mode, extra_env in (("default", {}), ("tuned", MALLOC_ENV)):
    env = dict(os.environ, **extra_env)
    if mode == "default":
      for name in MALLOC_ENV:
        env.pop(name, None)
    load = load_average()
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.benchmarks.train_step", "--child",
         "--batch_sizes", str(batch_size), "--group_size", str(args.group_size),
         "--policies", ",".join(args.policies), "--steps", str(args.steps),
         "--num_queries", str(args.num_queries)],
        env=env, capture_output=True, text=True, check=True,
        cwd=str(pathlib.Path(__file__).resolve().parents[2]))
    stats = json.loads(proc.stdout.strip().splitlines()[-1])
    for kind, value in stats.items():
      out.setdefault(kind, {})[mode] = dict(value, load=f"{load} / {load_average()}")
    print(f"malloc probe {mode}: {stats}", flush=True)
  return out


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch_sizes", default="64,256,1024",
                      help="queries per step B (comma-separated); N = B * G")
  parser.add_argument("--group_size", type=int, default=8)
  parser.add_argument("--policies", default="categorical,token")
  parser.add_argument("--steps", type=int, default=20, help="timed steps per router and B")
  parser.add_argument("--num_queries", type=int, default=4000,
                      help="synthetic table size (70%% train; must exceed the largest B)")
  parser.add_argument("--xla_memory", action=argparse.BooleanOptionalAction, default=True,
                      help="report compiled.memory_analysis() (one extra compile each)")
  parser.add_argument("--write", action=argparse.BooleanOptionalAction, default=True,
                      help="write the '## Train step' section of RESULTS.md")
  parser.add_argument("--malloc_probe", action=argparse.BooleanOptionalAction, default=True,
                      help="at the largest B, time child processes with and without "
                      "MALLOC_ENV (glibc malloc tuning)")
  parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  args.policies = [p for p in args.policies.split(",") if p]
  batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b]
  command = command_line("experiments.benchmarks.train_step", argv)

  if args.child:  # one B, steady statistics only, as JSON on the last line
    import json  # pylint: disable=import-outside-toplevel
    from recal_jax import train  # pylint: disable=import-outside-toplevel
    from recal_jax.data import make_synthetic  # pylint: disable=import-outside-toplevel
    args.xla_memory = False
    table = make_synthetic(args.num_queries, seed=0, feature_dim=32)
    rows = bench_batch(batch_sizes[0], args, table, train.make_mesh(1))
    print(json.dumps({r["runner"].kind: {k: r[k] for k in ("steady_s", "cpu_s", "minflt")}
                      for r in rows}))
    return

  start = time.perf_counter()
  loads = [load_average()]
  from recal_jax import train  # pylint: disable=import-outside-toplevel
  from recal_jax.data import make_synthetic  # pylint: disable=import-outside-toplevel
  table = make_synthetic(args.num_queries, seed=0, feature_dim=32)
  mesh = train.make_mesh(1)
  results = []
  for b in batch_sizes:
    load_before = load_average()
    rows = bench_batch(b, args, table, mesh)
    for row in rows:
      row["load"] = f"{load_before} / {load_average()}"
      results.append(row)
      print(f"{row['runner'].kind:12s} B={b:5d} N={row['rollouts']:6d}: first "
            f"{row['first_s']:.2f} s, steady {row['steady_s'] * 1e3:.2f} ms "
            f"({row['rollouts'] / row['steady_s'] / 1e3:.0f} k rollouts/s), "
            f"CPU {row['cpu_s'] * 1e3:.2f} ms; load {row['load']}", flush=True)
  probe = malloc_probe(batch_sizes[-1], args) if args.malloc_probe else {}
  loads.append(load_average())
  wall = time.perf_counter() - start

  base = {r["rollouts"]: r["steady_s"] for r in results
          if r["runner"].kind == args.policies[0]}
  base_cpu = {r["rollouts"]: r["cpu_s"] for r in results
              if r["runner"].kind == args.policies[0]}
  speed_header = ["router", "B x G = N", "params", "first call s", "compile s",
                  "steady ms", "p10-p90 ms", "rollouts/s", f"x {args.policies[0]} (wall)",
                  "CPU ms / step", "rollouts / CPU s", f"x {args.policies[0]} (CPU)",
                  "load avg 1/5/15 (before / after)"]
  bound_header = ["router", "N", "GFLOP / step", "GFLOP/s (per CPU s)",
                  "XLA temp / args / out MB", "peak RSS first call MB",
                  "peak RSS step MB", "minor faults / step"]
  speed_rows, bound_rows = [], []
  for r in results:
    xla = r["xla"] or {}
    n = r["rollouts"]
    speed_rows.append([
        r["runner"].kind, f"{r['runner'].batch_size} x {args.group_size} = {n}",
        f"{r['runner'].num_params:,}", f"{r['first_s']:.2f}",
        f"{max(r['first_s'] - r['steady_s'], 0):.2f}", f"{r['steady_s'] * 1e3:.2f}",
        f"{r['p10_s'] * 1e3:.1f}-{r['p90_s'] * 1e3:.1f}",
        f"{n / r['steady_s'] / 1e3:,.0f} k", f"{r['steady_s'] / base[n]:.2f}",
        f"{r['cpu_s'] * 1e3:.2f}", f"{n / r['cpu_s'] / 1e3:,.0f} k",
        f"{r['cpu_s'] / base_cpu[n]:.2f}", r["load"]])
    bound_rows.append([
        r["runner"].kind, n,
        f"{xla['gflop']:.3f}" if xla else "n/a",
        f"{xla['gflop'] / r['cpu_s']:.1f}" if xla else "n/a",
        (f"{xla['temp']:.1f} / {xla['arguments']:.1f} / {xla['outputs']:.1f}"
         if xla else "n/a"),
        f"{max(r['compile_rss_mb'], 0):.0f}", f"{max(r['step_rss_mb'], 0):.1f}",
        f"{r['minflt']:.0f}"])
  probe_rows = []
  for kind, modes in probe.items():
    d, m = modes["default"], modes["tuned"]
    n = batch_sizes[-1] * args.group_size
    probe_rows.append([
        kind, n, f"{d['steady_s'] * 1e3:.1f} / {m['steady_s'] * 1e3:.1f}",
        f"{d['cpu_s'] * 1e3:.1f} / {m['cpu_s'] * 1e3:.1f}",
        f"{d['cpu_s'] / m['cpu_s']:.2f}", f"{d['minflt']:.0f} / {m['minflt']:.0f}",
        f"{n / m['steady_s'] / 1e3:,.0f} k", f"{d['load']} ; {m['load']}"])
  probe_md = markdown_table(
      ["router", "N", "wall ms: default / tuned", "CPU ms: default / tuned",
       "CPU speed-up", "minor faults / step: default / tuned", "rollouts/s (tuned)",
       "load avg (default child ; tuned child)"],
      probe_rows) if probe_rows else ""
  speed_md = markdown_table(speed_header, speed_rows)
  bound_md = markdown_table(bound_header, bound_rows)
  print(speed_md + "\n\n" + bound_md + "\n\n" + probe_md)

  text = "\n".join([
      SECTION, "",
      header_line("train_step.py", loads, wall), "",
      f"Command: `{command}`", "",
      "The library's own step (`make_step_functions(...).train_step`, state from "
      "`init_state`, batches from `QuerySampler` + `global_batch`): sample G routes "
      "per query, table lookup, ReCal advantages, clipped policy loss + gradient, "
      "clip + AdamW; `experiments/configs/default.py` with `policy.kind`, "
      "`batch_size`, `group_size` changed (hidden dims (128, 128); token router: "
      "GRU state 128, 3 tokens). Synthetic table (`make_synthetic`, "
      f"{args.num_queries} queries, 70% train, 32 features, 10 arms), 1 device. "
      "Each step runs as in `train_and_evaluate`: indices, `train_step`, "
      "`device_get(metrics)` (blocks). First call = trace + compile + one step; "
      "compile = first call - steady. Steady = median of "
      f"{args.steps} steps after one warm-up step, the routers interleaved "
      "round-robin at each B (so `x categorical` is a same-load ratio). CPU = "
      "process CPU time per step (all threads; > wall means both cores were used). "
      "Peak RSS = `getrusage(RUSAGE_SELF).ru_maxrss` minus VmRSS just before, "
      "after resetting the high-water mark (`echo 5 > /proc/self/clear_refs`), "
      "for the first call and for 3 steps run alone (`jax.devices()[0].memory_stats()` "
      "is None on CPU). XLA MB = `lower(...).compile().memory_analysis()` of the "
      "step (temporaries / arguments incl. the device table / outputs).", "",
      speed_md, "",
      "Both routers run the query encoder once per query (`repeats=G` in "
      "`sample_routes` and the loss), then repeat its output over the G routes.", "",
      "Memory and what bounds the step (GFLOP and bytes from XLA's "
      "`cost_analysis()` of the compiled step; GFLOP/s = GFLOP / CPU seconds; "
      "minor page faults per timed step from `getrusage`):", "",
      bound_md, ""] + ([
      "glibc malloc probe at the largest N: two child processes run after the "
      "table above, one after the other, each timing both routers as above "
      f"({args.steps} steps round-robin): glibc defaults, then 'tuned' = env "
      "`MALLOC_ARENA_MAX=1 MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=1073741824` "
      "(one arena, no chunk mmap-ed, the heap top kept: XLA's temporary buffer, "
      "> 32 MiB at this N, is reused instead of being mapped, page-faulted in "
      "and unmapped on every step. Without `MALLOC_ARENA_MAX=1` the token "
      "router's 145 MiB buffer still faulted: XLA's threads allocate from "
      "per-thread arenas capped at 64 MiB, which fall back to mmap). Not "
      "interleaved: compare CPU ms and faults (less load-sensitive than wall "
      "time).", "",
      probe_md, ""] if probe_md else []))
  if args.write:
    write_section(SECTION, text)
    print(f"wrote {RESULTS_FILE}")


if __name__ == "__main__":
  main()
