r"""Times routing 10,000 queries with a trained `recal_jax.router.Router`.

Trains `experiments/configs/quick.py` briefly with the hashing featurizer
(`data.featurizer='hashing'`, 512-d; `--train_steps` steps, default 50, in a
temp work dir) for each router kind in `--policies`, or reuses `--workdir`,
then `Router.load(workdir)` (best checkpoint) and times, on `--num_queries`
query texts of a fresh synthetic table (seed 1, so not the training texts):

  featurize        `router.featurize(texts)` -> features [Q, 512] (numpy
                   hashing featurizer), cold (a fresh featurizer, empty n-gram
                   memo) and warm (memo filled by the cold call)
  route greedy     `router.route(features)` (default rule)
  route cost_weight  `router.route(features, cost_weight=--cost_weight)`
  route budget     `router.route(features, budget=--budget)`
  texts -> routes  `router.route(texts)`: featurize + route, cold / warm memo
  jitted core      the jitted part alone (`router._core`, default grid), to
                   split route() into XLA work and Python / numpy overhead

First call = trace + compile + run (the greedy and budget rules share one
program: same cost-weight grid of 97 values; `cost_weight` compiles its own,
a grid of 1). Steady = median of `--repeats` calls, the three rules
interleaved round-robin. Target: 10,000 featurized queries in under 1 s.

  python -m experiments.benchmarks.route
  python -m experiments.benchmarks.route --workdir=/tmp/recal_quick --policies=categorical

Prints a markdown table and writes the "## Routing" section of
experiments/benchmarks/RESULTS.md (only that section is replaced).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time

from experiments.benchmarks import common

SECTION = "## Routing"
TARGET_S = 1.0


def train_quick(kind: str, steps: int, workdir: str) -> float:
  """Trains the quick config (hashing features) for `steps` steps; -> wall s."""
  from experiments.configs import quick  # pylint: disable=import-outside-toplevel
  from recal_jax import train  # pylint: disable=import-outside-toplevel
  config = quick.get_config()
  config.data.featurizer = "hashing"
  config.policy.kind = kind
  config.num_train_steps = steps
  config.eval_every_steps = max(steps // 2, 1)
  config.log_every_steps = max(steps // 2, 1)
  config.checkpoint_every_steps = steps
  if kind == "token":  # the overrides experiments/configs/default.py documents
    config.loss.entropy_coef = 0.2
    config.learning_rate = 1e-3
  start = time.perf_counter()
  train.train_and_evaluate(config, workdir)
  return time.perf_counter() - start


def timed(fn):
  start = time.perf_counter()
  out = fn()
  return time.perf_counter() - start, out


def bench_router(workdir: str, texts: list[str], args) -> dict:
  import jax  # pylint: disable=import-outside-toplevel
  from recal_jax import router as router_lib  # pylint: disable=import-outside-toplevel
  from recal_jax.data import features as features_lib  # pylint: disable=import-outside-toplevel

  res = {}
  res["load_s"], router = timed(lambda: router_lib.Router.load(workdir))
  identity = router.description.get("featurizer")
  res["featurizer"] = identity
  res["feature_dim"] = router.feature_dim
  res["policy"] = router.config.policy.kind
  res["num_arms"] = len(router.arm_names)

  # Featurisation, cold memo then warm.
  router.featurizer = features_lib.make_featurizer(identity)
  res["featurize_cold_s"], features = timed(lambda: router.featurize(texts))
  warm = [timed(lambda: router.featurize(texts))[0] for _ in range(args.repeats)]
  res["featurize_warm_s"] = statistics.median(warm)

  rules = {
      "greedy": lambda: router.route(features),
      f"cost_weight={args.cost_weight:g}": lambda: router.route(features, cost_weight=args.cost_weight),
      f"budget={args.budget:g}": lambda: router.route(features, budget=args.budget),
  }
  grid = router_lib.COST_WEIGHT_GRID
  rules["jitted core only"] = lambda: jax.device_get(router._core(router.params, features, grid))  # pylint: disable=protected-access
  first, steady = {}, {name: [] for name in rules}
  outputs = {}
  for name, fn in rules.items():
    first[name], outputs[name] = timed(fn)
  for _ in range(args.repeats):
    for name, fn in rules.items():
      steady[name].append(timed(fn)[0])
  res["first"] = first
  res["steady"] = {k: statistics.median(v) for k, v in steady.items()}
  try:  # XLA's cost model of the jitted core (cached compile: cheap)
    cost = router._core.lower(router.params, features, grid).compile().cost_analysis()  # pylint: disable=protected-access
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    res["core_gflop"] = float(cost.get("flops", float("nan"))) / 1e9
  except Exception:  # pylint: disable=broad-except
    res["core_gflop"] = float("nan")
  budget_out = outputs[f"budget={args.budget:g}"]
  res["budget_met"] = budget_out.budget_met
  res["budget_lambda"] = budget_out.cost_weight
  res["mean_cost"] = {k: float(v.expected_cost.mean()) for k, v in outputs.items()
                      if hasattr(v, "expected_cost")}

  # Texts -> routes, cold memo (fresh featurizer) then warm.
  router.featurizer = features_lib.make_featurizer(identity)
  res["texts_cold_s"] = timed(lambda: router.route(texts))[0]
  res["texts_warm_s"] = statistics.median(
      [timed(lambda: router.route(texts))[0] for _ in range(args.repeats)])
  return res


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", default="", help="reuse this training work dir "
                      "(otherwise train the quick config in a temp dir)")
  parser.add_argument("--policies", default="categorical,token",
                      help="router kinds to train and time (ignored with --workdir)")
  parser.add_argument("--train_steps", type=int, default=50)
  parser.add_argument("--num_queries", type=int, default=10_000)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--cost_weight", type=float, default=300.0)
  parser.add_argument("--budget", type=float, default=1e-3, help="USD per query")
  parser.add_argument("--write", action=argparse.BooleanOptionalAction, default=True,
                      help="write the '## Routing' section of RESULTS.md")
  args = parser.parse_args(argv)
  command = common.command_line("experiments.benchmarks.route", argv)

  start = time.perf_counter()
  loads = [common.load_average()]
  from absl import logging as absl_logging  # pylint: disable=import-outside-toplevel
  from recal_jax.data import make_synthetic  # pylint: disable=import-outside-toplevel
  absl_logging.set_verbosity(absl_logging.WARNING)
  texts = [str(t) for t in make_synthetic(args.num_queries, seed=1).texts]

  runs = []
  if args.workdir:
    runs.append((args.workdir, None, None))
  else:
    for kind in [p for p in args.policies.split(",") if p]:
      workdir = tempfile.mkdtemp(prefix=f"recal_route_{kind}_")
      train_s = train_quick(kind, args.train_steps, workdir)
      print(f"trained {kind} router: {args.train_steps} steps in {train_s:.1f} s", flush=True)
      runs.append((workdir, kind, train_s))
  results = []
  try:
    for workdir, _, train_s in runs:
      load = common.load_average()
      res = bench_router(workdir, texts, args)
      res["train_s"], res["load"] = train_s, f"{load} / {common.load_average()}"
      results.append(res)
      print(f"{res['policy']}: " + ", ".join(
          f"{k} first {res['first'][k]:.3f} s steady {res['steady'][k] * 1e3:.1f} ms"
          for k in res["first"]), flush=True)
  finally:
    if not args.workdir:
      for workdir, _, _ in runs:
        shutil.rmtree(workdir, ignore_errors=True)
  loads.append(common.load_average())

  q = args.num_queries
  header = ["router", "operation", f"first call s", "steady ms (median)",
            "queries/s (steady)", "target < 1 s"]
  rows = []
  for r in results:
    name = f"{r['policy']} ({r['num_arms']} arms, D={r['feature_dim']})"
    rows.append([name, f"featurize {q} texts (numpy hashing)", f"{r['featurize_cold_s']:.3f} (cold memo)",
                 f"{r['featurize_warm_s'] * 1e3:.0f} (warm memo)",
                 f"{q / r['featurize_warm_s']:,.0f}", "-"])
    for rule in r["first"]:
      op = (f"route {q} featurized queries, {rule}" if rule != "jitted core only"
            else f"jitted core only ({q} queries, 97-value grid, device_get)")
      rows.append([name, op, f"{r['first'][rule]:.3f}", f"{r['steady'][rule] * 1e3:.1f}",
                   f"{q / r['steady'][rule]:,.0f}",
                   ("met" if r["steady"][rule] < TARGET_S else "NOT met")
                   if rule != "jitted core only" else "-"])
    rows.append([name, f"route {q} texts (featurize + greedy)",
                 f"{r['texts_cold_s']:.3f} (cold memo)", f"{r['texts_warm_s'] * 1e3:.0f} (warm memo)",
                 f"{q / r['texts_warm_s']:,.0f}", "-"])
  table_md = common.markdown_table(header, rows)
  extra_header = ["router", "trained (quick, hashing)", "Router.load s",
                  "jitted core GFLOP (97 grid)", "core GFLOP/s (steady)",
                  f"budget {args.budget:g}: met / lambda", "mean expected cost (greedy / "
                  f"cost_weight / budget)", "load avg 1/5/15 (before / after)"]
  extra_rows = []
  for r in results:
    costs = list(r["mean_cost"].values())
    extra_rows.append([
        r["policy"], (f"{args.train_steps} steps, {r['train_s']:.1f} s" if r["train_s"] else
                      f"--workdir {args.workdir}"),
        f"{r['load_s']:.2f}", f"{r['core_gflop']:.2f}",
        f"{r['core_gflop'] / r['steady']['jitted core only']:.1f}", f"{r['budget_met']} / {r['budget_lambda']:.3g}",
        " / ".join(f"{c:.2e}" for c in costs), r["load"]])
  extra_md = common.markdown_table(extra_header, extra_rows)
  print(table_md + "\n\n" + extra_md)

  wall = time.perf_counter() - start
  text = "\n".join([
      SECTION, "",
      common.header_line("route.py", loads, wall), "",
      f"Command: `{command}`", "",
      (f"Router: `experiments/configs/quick.py` with `data.featurizer='hashing'` "
       f"trained {args.train_steps} steps in a temp work dir (token router: "
       "entropy_coef 0.2, lr 1e-3 as default.py documents), loaded with "
       "`Router.load(workdir)` (best checkpoint)." if not args.workdir else
       f"Router: `Router.load({args.workdir!r})`.") +
      f" Queries: the {q} texts of `make_synthetic({q}, seed=1)`. First call = "
      "trace + compile + run; greedy and budget share one compiled program (the "
      "97-value cost-weight grid), so budget's first call is already compiled; "
      "cost_weight compiles its own (grid of 1). Steady = median of "
      f"{args.repeats} calls, the rules interleaved round-robin. `route()` includes "
      "input checks, the jitted core, `device_get` and building the `RouteResult` "
      "(per-query model / strategy names). 'jitted core only' calls "
      "`router._core` directly. Featurize cold = a fresh hashing featurizer "
      "(empty n-gram memo); warm = memo filled. `Router.load` = first load in "
      "this process (after training here); GFLOP = XLA `cost_analysis()` of the "
      "jitted core.", "",
      table_md, "",
      extra_md, "",
      "Structure behind the numbers (from the code, not measured here): the "
      "token router's core scores every arm by teacher-forcing all A routes of "
      "every query (`router._arm_log_probs`: [Q x A, 3] rows, so the query "
      "encoder and the 3 GRU steps run once per (query, arm) pair, although "
      "the first step is shared by all arms and the second by all arms of a "
      "strategy); the categorical core is one MLP pass per query. All rules "
      "compute the [L, Q, A] utility grid, greedy included. `Router.load` "
      "builds its restore target with an eager (op-by-op, un-jitted) "
      "`train.init_state`.", ""])
  if args.write:
    common.write_section(SECTION, text)
    print(f"wrote {common.RESULTS_FILE}")


if __name__ == "__main__":
  main()
