r"""Benchmarks the ReCal calibrated advantage against GRPO, numpy and a copy floor.

For N = 2^min_log2 ... 2^max_log2 rollouts, K = 3 components (format 0/1,
correctness 0/1, cost reward < 0), groups of 8 (`group_ids = repeat(arange(N /
8), 8)`), 7 datasets (one per group), it times, side by side in one process
(round-robin over the methods, so a change of machine load hits all alike):

  recal          `recal_advantages(config=method_config('recal'), group_size=8)`,
                 jitted, every stage on, contiguous layout
  recal_general  the same with `group_size=None` (any layout: scatter-adds)
  grpo           `grpo_advantages(group_size=8)` on the summed reward, jitted
  gdpo           `gdpo_advantages(group_size=8)`, jitted
  recal_gdpo     `recal_advantages(config=method_config('gdpo'), group_size=8)`
  numpy          the same ReCal computation vectorised in numpy (np.bincount)
  loop           the same ReCal computation with a Python loop over groups
                 (numpy per group, as several RL libraries do), N <= 2^loop_max_log2
  floor          a jitted copy: reads every input byte once (components,
                 group ids, dataset ids, mask) and writes [N] + [N] float32

Steady state is the median of `--repeats` calls (`block_until_ready`), after
one warm-up call whose time is reported as the compile time. A shuffled and
ragged layout (group sizes 4..12, rows permuted) is timed at
`--ragged_log2`. The table (time, rollouts/s, ratio to numpy, ratio to the
floor, and the slope of log time vs log N) is printed and written to
experiments/benchmarks/RESULTS.md under "## Advantage" (only that section is
replaced), with the date, machine, load average and command.

It also reports what bounds the ReCal time: minor page faults and kernel time
per call at every N (getrusage); at `--probe_log2` the XLA temporary arena,
materialised [N] buffers, loop fusions, scatters and gathers of the compiled
HLO, and the time of `recal_advantages` at git revision `--baseline_rev`
(before / after); at `--malloc_log2` (`--malloc_probe`) the timing in child
processes with the default glibc malloc and with `MALLOC_MMAP_MAX_=0`, which
stops glibc from mmap-ing (and the kernel from page-faulting in, on every
call) XLA's temporary arena when it exceeds the 32 MiB mmap threshold.

  python -m experiments.benchmarks.advantage
  python -m experiments.benchmarks.advantage --min_log2=16 --max_log2=20 --repeats=9
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import pathlib
import re
import shlex
import statistics
import subprocess
import sys
import time

import numpy as np

from experiments.benchmarks.common import (  # noqa: E402
    RESULTS_FILE, load_average, machine_description, write_section)
SECTION = "## Advantage"
GROUP = 8
DATASETS = 7
METHODS = ("recal", "recal_general", "grpo", "gdpo", "recal_gdpo", "numpy", "loop", "floor")


# ------------------------------------------------------------------ data
def make_batch(n: int, seed: int = 0, ragged: bool = False):
  """Components [N, 3], group ids, dataset ids, mask, num_groups (numpy)."""
  rng = np.random.default_rng(seed)
  if ragged:
    sizes = rng.integers(4, 13, n // 4 + 1)
    sizes = sizes[:np.searchsorted(np.cumsum(sizes), n) + 1]
    group_ids = np.repeat(np.arange(len(sizes)), sizes)[:n]
    num_groups = int(group_ids.max()) + 1
  else:
    num_groups = n // GROUP
    group_ids = np.repeat(np.arange(num_groups), GROUP)
  group_dataset = rng.integers(0, DATASETS, num_groups)
  dataset_ids = group_dataset[group_ids]
  # Per-group success rates so that some groups have spread and some not.
  p_correct = rng.choice([0.0, 0.3, 0.5, 0.8, 1.0], num_groups)[group_ids]
  components = np.stack([
      (rng.random(n) < 0.9),
      (rng.random(n) < p_correct),
      -rng.exponential(0.3, n)], axis=1).astype(np.float32)
  mask = np.ones(n, np.float32)
  if ragged:
    perm = rng.permutation(n)
    components, group_ids, dataset_ids, mask = (
        components[perm], group_ids[perm], dataset_ids[perm], mask[perm])
  return (components, group_ids.astype(np.int32), dataset_ids.astype(np.int32),
          mask, num_groups)


# -------------------------------------------------- numpy implementations
def _np_stats(values, ids, num, weights):
  """Two-pass masked mean / std per segment with np.bincount."""
  count = np.bincount(ids, weights, num)
  total = np.bincount(ids, weights * values, num)
  mean = total / np.maximum(count, 1.0)
  sq = np.bincount(ids, weights * (values - mean[ids]) ** 2, num)
  std = np.sqrt(np.where(count > 0, sq / np.maximum(count, 1.0), 0.0))
  return mean, std, count


def numpy_recal(components, group_ids, dataset_ids, mask, num_groups, cfg):
  """ReCal (`method_config('recal')`) vectorised with np.bincount."""
  eps = cfg.eps
  valid = mask * np.isfinite(components).all(1)
  raw = np.where(valid[:, None] > 0, components, 0.0)
  # Stage 0: cost standardised per dataset.
  mean_d, std_d, _ = _np_stats(raw[:, 2], dataset_ids, DATASETS, valid)
  cost = np.where(valid > 0, (raw[:, 2] - mean_d[dataset_ids])
                  / (std_d[dataset_ids] + eps), 0.0)
  # Stage 1: hierarchical gate format -> correctness -> cost, conditional.
  g1 = (raw[:, 0] >= 0.5).astype(np.float64)
  g2 = g1 * (raw[:, 1] >= 0.5)
  adv = np.zeros(len(valid))
  for x, m, w in ((raw[:, 0], valid, 1.0), (g1 * raw[:, 1], valid * g1, 1.0),
                  (g2 * cost, valid * g2, 0.5)):
    mean, std, _ = _np_stats(x, group_ids, num_groups, m)
    spread = (m > 0) & (std[group_ids] > 1e-12)  # no spread: A = 0
    adv += w * np.where(spread, (x - mean[group_ids]) / (std[group_ids] + eps), 0.0)
  # Stage 2: Bernoulli variance weights, batch dataset normalisation.
  p, _, count = _np_stats(raw[:, 1], group_ids, num_groups, valid)
  present = count > 0
  h = np.where(present, np.sqrt(np.clip(p, 0, 1) * (1 - np.clip(p, 0, 1))), 0.0)
  mean_h = h[present].mean() if present.any() else 0.0
  omega = (np.clip(h / mean_h, cfg.weight_min, cfg.weight_max) if mean_h > 0
           else np.ones_like(h))
  weights = np.where(present, omega, 0.0)[group_ids] * valid
  mean_d, std_d, _ = _np_stats(adv, dataset_ids, DATASETS, valid)
  adv = np.where((valid > 0) & (adv != 0),  # rows with A = 0 stay 0
                 (adv - mean_d[dataset_ids]) / (std_d[dataset_ids] + eps), 0.0)
  return adv, weights


def loop_recal(components, group_ids, dataset_ids, mask, num_groups, cfg):
  """The same ReCal with a Python loop over groups (numpy per group)."""
  eps = cfg.eps
  n = len(mask)
  rows_of = collections.defaultdict(list)
  for i, g in enumerate(group_ids.tolist()):
    rows_of[g].append(i)
  valid = mask * np.isfinite(components).all(1)
  raw = np.where(valid[:, None] > 0, components, 0.0)
  cost = np.zeros(n)
  for d in range(DATASETS):
    rows = np.flatnonzero((dataset_ids == d) & (valid > 0))
    if len(rows):
      c = raw[rows, 2]
      cost[rows] = (c - c.mean()) / (c.std() + eps)
  adv = np.zeros(n)
  hs = {}
  for g, rows in rows_of.items():
    rows = np.asarray(rows)
    rows = rows[valid[rows] > 0]
    if not len(rows):
      continue
    fmt, correct, c = raw[rows, 0], raw[rows, 1], cost[rows]
    a = (fmt - fmt.mean()) / (fmt.std() + eps)
    ok = fmt >= 0.5
    if ok.any():
      a[ok] += (correct[ok] - correct[ok].mean()) / (correct[ok].std() + eps)
    ok2 = ok & (correct >= 0.5)
    if ok2.any():
      a[ok2] += 0.5 * (c[ok2] - c[ok2].mean()) / (c[ok2].std() + eps)
    adv[rows] = a
    p = np.clip(correct.mean(), 0, 1)
    hs[g] = np.sqrt(p * (1 - p))
  mean_h = np.mean(list(hs.values())) if hs else 0.0
  weights = np.zeros(n)
  for g, rows in rows_of.items():
    if g in hs:
      w = np.clip(hs[g] / mean_h, cfg.weight_min, cfg.weight_max) if mean_h > 0 else 1.0
      rows = np.asarray(rows)
      weights[rows] = w * valid[rows]
  for d in range(DATASETS):
    rows = np.flatnonzero((dataset_ids == d) & (valid > 0))
    if len(rows):
      a = adv[rows]
      adv[rows] = (a - a.mean()) / (a.std() + eps)
  return adv, weights


# ------------------------------------------------------------ machinery
def jax_functions(num_groups: int):
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from recal_jax import advantage  # pylint: disable=import-outside-toplevel

  cfg = advantage.method_config("recal")
  gdpo_cfg = advantage.method_config("gdpo")
  w = cfg.weight_vector()

  def recal(c, g, d, m, group_size=GROUP, config=cfg):
    out = advantage.recal_advantages(c, g, num_groups, d, DATASETS, m, config=config,
                                     group_size=group_size)
    return out.advantages, out.weights

  def grpo(c, g, d, m):
    del d
    summed = w[0] * c[:, 0] + w[1] * c[:, 1] + w[2] * c[:, 2]
    return advantage.grpo_advantages(summed, g, num_groups, m, group_size=GROUP)

  def gdpo(c, g, d, m):
    del d
    return advantage.gdpo_advantages(c, g, num_groups, m, group_size=GROUP,
                                     component_weights=gdpo_cfg.weight_vector())

  def floor(c, g, d, m):
    # Reads every input byte once, writes [N] advantages and [N] weights.
    return (c[:, 0] + c[:, 1] + c[:, 2] + m,
            g.astype(jnp.float32) + d.astype(jnp.float32))

  return {
      "recal": jax.jit(recal),
      "recal_general": jax.jit(lambda c, g, d, m: recal(c, g, d, m, None)),
      "grpo": jax.jit(grpo),
      "gdpo": jax.jit(gdpo),
      "recal_gdpo": jax.jit(lambda c, g, d, m: recal(c, g, d, m, config=gdpo_cfg)[0]),
      "floor": jax.jit(floor),
  }, cfg


def time_round_robin(fns: dict, repeats: int) -> tuple[dict, dict]:
  """First call (compile + run) and `repeats` steady calls, interleaved."""
  first, steady = {}, {name: [] for name in fns}
  for name, fn in fns.items():
    t = time.perf_counter()
    fn()
    first[name] = time.perf_counter() - t
  for _ in range(repeats):
    for name, fn in fns.items():
      t = time.perf_counter()
      fn()
      steady[name].append(time.perf_counter() - t)
  return first, {k: statistics.median(v) for k, v in steady.items()}


def bench_size(n: int, repeats: int, loop_max: int, ragged: bool = False,
               methods=METHODS) -> dict:
  import jax  # pylint: disable=import-outside-toplevel
  comps, gids, dids, mask, num_groups = make_batch(n, ragged=ragged)
  jfns, cfg = jax_functions(num_groups)
  args = [jax.device_put(x) for x in (comps, gids, dids, mask)]
  calls = {}
  for name in methods:
    if name in jfns:
      calls[name] = (lambda f: lambda: jax.block_until_ready(f(*args)))(jfns[name])
    elif name == "numpy":
      calls[name] = lambda: numpy_recal(comps, gids, dids, mask, num_groups, cfg)
    elif name == "loop" and n <= loop_max:
      calls[name] = lambda: loop_recal(comps, gids, dids, mask, num_groups, cfg)
  first, steady = time_round_robin(calls, repeats)
  faults = fault_probe(calls["recal"]) if "recal" in calls else None
  # Sanity: every implementation computes the same thing.
  want = numpy_recal(comps, gids, dids, mask, num_groups, cfg)
  err = {}
  for name in ("recal", "recal_general", "loop"):
    if name in calls:
      got = (jfns[name](*args) if name in jfns
             else loop_recal(comps, gids, dids, mask, num_groups, cfg))
      err[name] = float(max(np.max(np.abs(np.asarray(got[0]) - want[0])),
                            np.max(np.abs(np.asarray(got[1]) - want[1]))))
  return {"n": n, "first": first, "steady": steady, "max_abs_err": err,
          "faults": faults}


def fault_probe(call, calls: int = 3) -> dict:
  """Minor page faults and kernel (system) time per call (getrusage)."""
  import resource  # pylint: disable=import-outside-toplevel
  before = resource.getrusage(resource.RUSAGE_SELF)
  for _ in range(calls):
    call()
  after = resource.getrusage(resource.RUSAGE_SELF)
  return {"minflt": (after.ru_minflt - before.ru_minflt) / calls,
          "sys_s": (after.ru_stime - before.ru_stime) / calls}


def probe(n: int) -> dict:
  """What bounds the ReCal time at N: XLA temp memory and the compiled HLO."""
  import jax  # pylint: disable=import-outside-toplevel
  comps, gids, dids, mask, num_groups = make_batch(n)
  jfns, _ = jax_functions(num_groups)
  out = {}
  for name in ("recal", "recal_general", "grpo", "gdpo", "recal_gdpo", "floor"):
    compiled = jfns[name].lower(comps, gids, dids, mask).compile()
    text = compiled.as_text()
    rows = rf"\[{n}\]"
    out[name] = {
        "temp_MiB": compiled.memory_analysis().temp_size_in_bytes / 2**20,
        "fusions": len(re.findall(r"= \S+ fusion\(", text)),
        "row_buffers": len(re.findall(rf"= \w+{rows}\S* fusion\(", text)),
        "scatters": len(re.findall(r"scatter\(", text)),
        "gathers": len(re.findall(r"gather\(", text)),
    }
  return out


def malloc_probe(n: int, repeats: int, rounds: int = 3) -> dict | None:
  """recal / floor at N in child processes, alternately without and with
  `MALLOC_MMAP_MAX_=0`; the median over rounds of each child's median."""
  root = pathlib.Path(__file__).resolve().parents[2]
  cmd = [sys.executable, "-m", "experiments.benchmarks.advantage", "--child",
         str(n), "--repeats", str(repeats)]
  no_mmap = dict(os.environ, MALLOC_MMAP_MAX_="0",
                 MALLOC_TRIM_THRESHOLD_=str(1 << 30), MALLOC_TOP_PAD_=str(256 << 20))
  runs = {"default malloc": [], "MALLOC_MMAP_MAX_=0": []}
  try:
    for _ in range(rounds):
      for label, env in (("default malloc", dict(os.environ)),
                         ("MALLOC_MMAP_MAX_=0", no_mmap)):
        res = subprocess.run(cmd, env=env, capture_output=True, text=True,
                             timeout=240, cwd=root)
        runs[label].append(json.loads(res.stdout.strip().splitlines()[-1]))
  except (subprocess.SubprocessError, ValueError, IndexError):
    return None
  return {label: {k: statistics.median(r[k] for r in rs) for k in rs[0]}
          for label, rs in runs.items()}


def baseline_probe(n: int, repeats: int, rev: str) -> dict | None:
  """Times `recal_advantages` of git revision `rev` (read with `git show`)
  against the current one, interleaved in this process."""
  import importlib  # pylint: disable=import-outside-toplevel
  import inspect  # pylint: disable=import-outside-toplevel
  import tempfile  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  root = pathlib.Path(__file__).resolve().parents[2]
  tmp = pathlib.Path(tempfile.mkdtemp(prefix="recal_baseline_"))
  pkg = tmp / "recal_baseline"
  pkg.mkdir()
  (pkg / "__init__.py").write_text("")
  core = ("segments", "estimators", "hierarchy", "recal_config", "calibration",
          "advantage", "rewards")  # the core's modules at any revision (some absent)
  for name in core:
    try:
      src = subprocess.run(["git", "show", f"{rev}:recal_jax/{name}.py"], cwd=root,
                           capture_output=True, text=True, check=True).stdout
    except (subprocess.SubprocessError, OSError):
      if name in ("segments", "advantage"):
        return None
      continue
    (pkg / f"{name}.py").write_text(src.replace("from recal_jax", "from recal_baseline"))
  sys.path.insert(0, str(tmp))
  try:
    old = importlib.import_module("recal_baseline.advantage")
  finally:
    sys.path.remove(str(tmp))
  comps, gids, dids, mask, num_groups = make_batch(n)
  jfns, _ = jax_functions(num_groups)
  cfg = old.method_config("recal")
  # Revisions with a static layout argument get the same contiguous layout.
  layout = ({"group_size": GROUP} if "group_size" in inspect.signature(
      inspect.unwrap(old.recal_advantages)).parameters else {})
  before = jax.jit(lambda c, g, d, m: old.recal_advantages(
      c, g, num_groups, d, DATASETS, m, config=cfg, **layout)[:2])
  args = [jax.device_put(x) for x in (comps, gids, dids, mask)]
  calls = {f"recal @ {rev}": before, "recal": jfns["recal"],
           "recal_general": jfns["recal_general"]}
  first, steady = time_round_robin(
      {k: (lambda f: lambda: jax.block_until_ready(f(*args)))(f)
       for k, f in calls.items()}, repeats)
  del first
  return steady


def slope(sizes, times) -> float:
  pts = [(np.log2(n), np.log2(t)) for n, t in zip(sizes, times) if t]
  if len(pts) < 2:
    return float("nan")
  x, y = np.array(pts).T
  return float(np.polyfit(x, y, 1)[0])


# --------------------------------------------------------------- report
def fmt_ms(t):
  return "-" if t is None else f"{t * 1e3:.3f}"


def fmt_rate(n, t):
  return "-" if not t else f"{n / t / 1e6:.1f} M"


def fmt_ratio(x):
  return "-" if x is None or not np.isfinite(x) else f"{x:.2f}"


def timing_table(results) -> list[str]:
  """Markdown rows: per N and method, compile, steady time, rate and ratios."""
  lines = ["| N | method | compile s | steady ms | rollouts/s | x numpy | x floor |",
           "| --- | --- | --- | --- | --- | --- | --- |"]
  for r in results:
    st = r["steady"]
    for name in METHODS:
      if name not in st:
        continue
      t = st[name]
      lines.append(
          f"| 2^{int(np.log2(r['n']))} | {name} | {r['first'][name]:.2f} | "
          f"{fmt_ms(t)} | {fmt_rate(r['n'], t)} | "
          f"{fmt_ratio(st['numpy'] / t if 'numpy' in st else None)} | "
          f"{fmt_ratio(t / st['floor'] if 'floor' in st else None)} |")
  return lines


def build_report(results, ragged, probe_res, malloc_res, baseline_res, args,
                 loads, elapsed) -> str:
  import jax  # pylint: disable=import-outside-toplevel
  lines = [SECTION, ""]
  lines.append(
      f"Written by `experiments/benchmarks/advantage.py` on "
      f"{datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}; machine: "
      f"{machine_description()}; default XLA flags; load average (1, 5, 15 min) at start {loads[0]}, at end "
      f"{loads[1]}; wall time {elapsed:.0f} s.")
  lines.append("")
  lines.append(f"Command: `{args.command}`")
  lines.append("")
  lines.append(
      "K = 3 components (format 0/1, correctness 0/1, cost < 0), groups of 8 "
      "(`repeat(arange(N/8), 8)`), 7 datasets (one per group), no padding. "
      "Steady time = median of "
      f"{args.repeats} calls after a warm-up call, methods interleaved "
      "round-robin. `recal` = `recal_advantages(config=method_config('recal'), "
      "group_size=8)` (every stage on, contiguous layout); "
      "`recal_general` = same with `group_size=None` (any layout: scatter-adds); `grpo` "
      "= `grpo_advantages(group_size=8)` on the summed reward; `gdpo` = "
      "`gdpo_advantages(group_size=8)`; `recal_gdpo` = `recal_advantages(config="
      "method_config('gdpo'), group_size=8)`; `numpy` = the same ReCal "
      "vectorised with np.bincount (float64 accumulation); `loop` = a Python "
      "loop over groups, numpy per group (only N <= "
      f"2^{args.loop_max_log2}); `floor` = a jitted copy that reads every input "
      "byte once (components [N,3], group ids, dataset ids, mask: 24 B/row) and "
      "writes two [N] float32 arrays (8 B/row): `(c0 + c1 + c2 + mask, "
      "float(group_id) + float(dataset_id))`. x numpy = numpy time / time; "
      "x floor = time / floor time. Compile = first call (trace + XLA "
      "compile + one run).")
  lines.append("")
  lines += timing_table(results)
  lines.append("")
  lines.append("Ratios within one run (steady times): " + "; ".join(
      f"2^{int(np.log2(r['n']))}: recal / grpo {r['steady']['recal'] / r['steady']['grpo']:.2f}, "
      f"recal_general / grpo {r['steady']['recal_general'] / r['steady']['grpo']:.2f}, "
      f"recal_gdpo / gdpo {r['steady']['recal_gdpo'] / r['steady']['gdpo']:.2f}"
      for r in results) + ".")
  lines.append("")
  lines.append("Growth with N: slope of log2(time) vs log2(N), least squares "
               "(1 = linear); small N is dominated by fixed per-call costs, so "
               "the slope is also given over N >= 2^16.")
  lines.append("")
  lines += ["| method | slope, all N | slope, N >= 2^16 |", "| --- | --- | --- |"]
  for name in METHODS:
    ns = [r["n"] for r in results if name in r["steady"]]
    ts = [r["steady"][name] for r in results if name in r["steady"]]
    big = [(n, t) for n, t in zip(ns, ts) if n >= 2**16]
    lines.append(f"| {name} | {fmt_ratio(slope(ns, ts))} | "
                 f"{fmt_ratio(slope(*zip(*big)) if len(big) > 1 else float('nan'))} |")
  lines.append("")
  if ragged:
    lines.append("Shuffled, ragged layout (group sizes 4..12, rows permuted; "
                 "`group_size=None`):")
    lines.append("")
    lines += timing_table(ragged)
    lines.append("")
  errs = {name: max(r["max_abs_err"].get(name, 0.0) for r in results + ragged)
          for name in ("recal", "recal_general", "loop")}
  lines.append("Agreement with the numpy implementation (max |difference| of "
               "advantages and weights over all runs): " +
               ", ".join(f"{k} {v:.1e}" for k, v in errs.items()) + ".")
  lines.append("")
  if probe_res:
    lines.append(f"Compiled HLO at N = 2^{args.probe_log2}: XLA temporary arena, "
                 "loop fusions, fusions whose output is an [N]-row buffer "
                 "(materialised row arrays, outputs included), scatters, "
                 "gathers (one compiled path per call):")
    lines.append("")
    lines += ["| function | temp MiB | fusions | [N] buffers | scatters | gathers |",
              "| --- | --- | --- | --- | --- | --- |"]
    for name, p in probe_res.items():
      lines.append(f"| {name} | {p['temp_MiB']:.1f} | {p['fusions']} | "
                   f"{p['row_buffers']} | {p['scatters']} | {p['gathers']} |")
    lines.append("")
  lines.append("`recal` (contiguous layout): minor page faults and kernel time per call "
               "(getrusage over 3 calls; 4 KiB pages):")
  lines.append("")
  lines += ["| N | temp page faults / call | = MiB | kernel ms / call | steady ms |",
            "| --- | --- | --- | --- | --- |"]
  for r in results:
    f = r.get("faults")
    if f:
      lines.append(f"| 2^{int(np.log2(r['n']))} | {f['minflt']:.0f} | "
                   f"{f['minflt'] * 4 / 1024:.1f} | {f['sys_s'] * 1e3:.2f} | "
                   f"{fmt_ms(r['steady']['recal'])} |")
  lines.append("")
  if malloc_res:
    lines.append(
        f"glibc, N = 2^{args.malloc_log2}: child processes run alternately with "
        "the default malloc and with `MALLOC_MMAP_MAX_=0 "
        "MALLOC_TRIM_THRESHOLD_=1073741824 MALLOC_TOP_PAD_=268435456` (glibc "
        "then serves XLA's temporary arena from its heap instead of a fresh "
        "mmap, so it is not page-faulted in on every call); median over 3 "
        "rounds: " + "; ".join(
            f"{label}: recal {r['recal'] * 1e3:.2f} ms ({r['recal_faults']:.0f} "
            f"faults, {r['recal_sys'] * 1e3:.2f} ms kernel per call), floor "
            f"{r['floor'] * 1e3:.2f} ms" for label, r in malloc_res.items()) + ".")
    lines.append("")
  if baseline_res:
    lines.append(
        f"Before / after, N = 2^{args.probe_log2}, interleaved in one process "
        f"(`--baseline_rev {args.baseline_rev}`: that revision's "
        "core modules (segments, estimators, calibration, advantage, ...) read with `git show`): " + ", ".join(
            f"{k} {v * 1e3:.2f} ms" for k, v in baseline_res.items()) + ".")
    lines.append("")
  return "\n".join(lines) + "\n"


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--min_log2", type=int, default=12)
  parser.add_argument("--max_log2", type=int, default=22)
  parser.add_argument("--repeats", type=int, default=7)
  parser.add_argument("--loop_max_log2", type=int, default=16)
  parser.add_argument("--ragged_log2", type=int, nargs="*", default=[16, 20])
  parser.add_argument("--probe_log2", type=int, default=20)
  parser.add_argument("--malloc_probe", action=argparse.BooleanOptionalAction,
                      default=True)
  parser.add_argument("--malloc_log2", type=int, default=19)
  parser.add_argument("--baseline_rev", default="ebc1891",
                      help="git revision to time recal_advantages of at "
                      "--probe_log2 (default: the last one before issue 11's "
                      "static layout; empty: skip)")
  parser.add_argument("--write", action=argparse.BooleanOptionalAction, default=True,
                      help="write the section of RESULTS.md")
  parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  args.command = "python -m experiments.benchmarks.advantage " + " ".join(
      shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))

  if args.child is not None:
    r = bench_size(args.child, args.repeats, 0, methods=("recal", "floor"))
    print(json.dumps(dict(r["steady"], recal_faults=r["faults"]["minflt"],
                          recal_sys=r["faults"]["sys_s"])))
    return

  start = time.perf_counter()
  loads = [load_average()]
  results, ragged = [], []
  for log2 in range(args.min_log2, args.max_log2 + 1):
    n = 2**log2
    repeats = args.repeats if log2 <= 20 else max(3, args.repeats // 2)
    r = bench_size(n, repeats, 2**args.loop_max_log2)
    results.append(r)
    st = r["steady"]
    print(f"N=2^{log2}: " + "  ".join(f"{k} {v * 1e3:.3f} ms" for k, v in st.items())
          + f"  (load {load_average()})", flush=True)
  for log2 in args.ragged_log2:
    r = bench_size(2**log2, args.repeats, 2**args.loop_max_log2, ragged=True,
                   methods=("recal_general", "numpy", "floor"))
    ragged.append(r)
    print(f"ragged N=2^{log2}: " + "  ".join(
        f"{k} {v * 1e3:.3f} ms" for k, v in r["steady"].items()), flush=True)
  probe_res = probe(2**args.probe_log2) if args.probe_log2 else None
  malloc_res = (malloc_probe(2**args.malloc_log2, args.repeats)
                if args.malloc_probe and args.malloc_log2 else None)
  loads.append(load_average())
  baseline_res = (baseline_probe(2**args.probe_log2, args.repeats, args.baseline_rev)
                  if args.baseline_rev and args.probe_log2 else None)
  report = build_report(results, ragged, probe_res, malloc_res, baseline_res,
                        args, loads, time.perf_counter() - start)
  print(report)
  if args.write:
    write_section(SECTION, report)
    print(f"wrote {RESULTS_FILE}")


if __name__ == "__main__":
  main()
