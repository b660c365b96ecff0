r"""ReCal against the baselines, with ablations and seeds, on one routing table.

  python -m experiments.compare --config=experiments/configs/seven_datasets.py \
      --workdir=/tmp/recal_compare [--seeds=3] [--methods=recal,grpo,...]

For every seed and both input variants (query features alone, and features
plus a one-hot dataset id):

* non-RL routers: random, best single arm (chosen on train), category best,
  kNN, MLP score regressor, ERP; their hyper-parameters are chosen on the
  validation split (`baselines.select_on_validation`), never on test;
* RL routers: ReCal, each ReCal stage switched off in turn, Router-R1 scalar
  GRPO, GRPO, Dr. GRPO, RLOO, GDPO; the checkpoint is chosen on validation.
  The seeds of each (method, variant) train in one compiled program
  (`recal_jax.training.seeds`: vmapped over seeds, one compilation); each
  seed's result equals `train.train_and_evaluate` with that seed up to float
  rounding. `--novmap_seeds` runs `train_and_evaluate` per seed instead
  (Orbax checkpoints, TensorBoard files, resume inside a run);
* the per-query oracle (an upper bound, not a router).

Every router's cost knob is swept over one shared grid of cost weights
lambda (`recal_jax.curves.COST_WEIGHTS`): the non-RL routers route to
arg max_a predicted score - lambda * expected cost, the RL routers to
arg max_a log pi(a | x) - lambda * expected cost (`Router.arm_scores`, the
outcome model's cost). Per method and split `results.json` holds the curve
(its Pareto front), its AUC between the cheapest arm's and the best single
arm's cost, and the accuracy read off the curve at the best single arm's cost
and at half of it (`curves.curve_report`); `accuracy` / `cost` are the
lambda = 0 operating point.

Writes `results.json` (every run; `summary` has, per method, mean and std
over seeds of `accuracy`, `cost`, `macro_accuracy`, `macro_cost`, `auc`,
`acc_at_best_cost`, `acc_at_half_best_cost`), `results.md` (those columns and
test accuracy per dataset), `cost_quality.png` (the test cost-quality plane:
every method's swept curve, seed 0, and its lambda = 0 point with seed std;
single arms; oracle) and `training_curves.png` (reward, validation accuracy
and gradient norm over steps, seeds as bands).
Runs already in `workdir` (`runs/<method>[_id]/seed<k>/final.json`) are reused,
so an interrupted comparison resumes (with vmapped seeds, at the granularity
of a method and variant). `results.json` also records where the time went
(`timing`: data loading, each non-RL baseline, RL training and its
compilation).
"""

from __future__ import annotations

import copy
import json
import os
import sys
import time

from absl import flags
from absl import logging
import numpy as np
from ml_collections import config_flags
import tqdm

FLAGS = flags.FLAGS


def define_flags():
  """Defined only when run as a program: importing this module defines none."""
  config_flags.DEFINE_config_file("config", None, "Training config of the RL runs.",
                                  lock_config=False)
  flags.DEFINE_string("workdir", None, "Output directory.")
  flags.DEFINE_integer("seeds", 3, "Number of seeds per method.")
  flags.DEFINE_list("methods", ["recal", "recal_no_hierarchy", "recal_no_variance_weights",
                                "recal_no_dataset_norm", "router_r1", "grpo", "dr_grpo",
                                "rloo", "gdpo"], "RL methods (names of advantage.METHODS).")
  flags.DEFINE_list("variants", ["features", "features+dataset_id"], "Input variants.")
  flags.DEFINE_integer("num_train_steps", 0, "Override config.num_train_steps (0: keep).")
  flags.DEFINE_bool("vmap_seeds", True,
                    "Train the seeds of each (method, variant) in one compiled program "
                    "(recal_jax.training.seeds: no Orbax checkpoints, resume per method "
                    "and variant); --novmap_seeds: one train_and_evaluate run per seed.")
  flags.mark_flags_as_required(["config", "workdir"])


NON_RL = ("random", "best_single", "category_best", "knn", "mlp", "erp")
# Fits that do not depend on the seed: fitted once, the result listed for every seed.
SEED_FREE = ("best_single", "category_best", "knn", "erp")
VARIANT_SUFFIX = {"features": "", "features+dataset_id": " +id"}


def with_dataset_id(table):
  """The table with a one-hot dataset id appended to its features."""
  one_hot = np.eye(table.num_datasets, dtype=np.float32)[table.dataset_ids]
  return table.with_features(np.concatenate([table.features, one_hot], 1),
                             table.featurizer + "+dataset_id")


def without_dataset_id(table):
  """Inverse of `with_dataset_id`: the query features alone."""
  suffix = "+dataset_id"
  return table.with_features(table.features[:, :table.feature_dim - table.num_datasets],
                             table.featurizer[:-len(suffix)])


def split_metrics(table, choices):
  from recal_jax import evaluate  # pylint: disable=import-outside-toplevel
  m = evaluate.route_metrics(table, np.asarray(choices))
  return {"accuracy": m["accuracy"], "cost": m["cost"], "macro_accuracy": m["macro_accuracy"],
          "macro_cost": m["macro_cost"],
          "per_dataset": {k: {"accuracy": v["accuracy"], "cost": v["cost"]}
                          for k, v in m["per_dataset"].items()}}


def swept_metrics(table, scores, expected_cost):
  """`split_metrics` at lambda = 0 plus the swept curve's `curves.curve_report`."""
  from recal_jax import curves  # pylint: disable=import-outside-toplevel
  choices = curves.sweep_choices(scores, expected_cost, [0.0])[0]
  out = split_metrics(table, choices)
  out.update(curves.curve_report(table, curves.sweep(table, scores, expected_cost)))
  return out


def router_metrics(router, table):
  """`swept_metrics` of a fitted non-RL router (random: its one point, no knob)."""
  from recal_jax import baselines, curves  # pylint: disable=import-outside-toplevel
  if isinstance(router, baselines.RandomRouter):
    out = split_metrics(table, router.choose(table))
    out.update(curves.curve_report(table, [(out["cost"], out["accuracy"])]))
    return out
  return swept_metrics(table, router.predict_scores(table), router.expected_cost(table))


def validation_auc(val, router):
  """Hyper-parameter selection metric: the router's swept AUC on validation."""
  return router_metrics(router, val)["auc"]


def run_non_rl(name, table, seed):
  """Fits one non-RL router (hyper-parameters: best validation AUC) -> metrics and curves.

  On the '+dataset_id' table ERP takes the query features with
  `use_dataset_id=True` (an unpenalised per-dataset intercept, so its
  `ridge=inf` grid point is category best); kNN and MLP read the one-hot as
  features.
  """
  from recal_jax import baselines  # pylint: disable=import-outside-toplevel
  erp_kwargs = {}
  if name == "erp" and table.featurizer.endswith("+dataset_id"):
    table, erp_kwargs = without_dataset_id(table), {"use_dataset_id": True}
  train, val, test = (table.subset(s) for s in ("train", "validation", "test"))
  if name == "random":
    router, params = baselines.RandomRouter(seed=seed).fit(train), {}
  elif name == "best_single":
    router, params = baselines.BestSingleArm().fit(train), {}
  elif name == "category_best":
    router, params = baselines.CategoryBestRouter().fit(train), {}
  else:
    makers = {
        "knn": (baselines.KNNRouter, {"k": [5, 10, 20, 50, 100]}),
        "mlp": (lambda **p: baselines.MLPScoreRegressor(seed=seed, **p),
                {"hidden_size": [32, 128], "weight_decay": [0.01, 0.1]}),
        "erp": (lambda **p: baselines.ERPRouter(**erp_kwargs, **p),
                {"ridge": [1.0, 10.0, 100.0, 1e3, 1e4, float("inf")]}),
    }
    make, grid = makers[name]
    selection = baselines.select_on_validation(make, grid, train, val,
                                               router_metric=validation_auc)
    router, params = selection.router, selection.params
  return {"test": router_metrics(router, test), "validation": router_metrics(router, val),
          "params": params}


def rl_curves(result, table, config, params):
  """Adds the swept curve of a trained policy (its best parameters) to
  `result[split]`: arg max_a log pi(a | x) - lambda * c(x, a), with c the
  outcome model fitted on the train split, as `Router.arm_scores` routes."""
  from recal_jax import outcome_model, policies  # pylint: disable=import-outside-toplevel
  policy = policies.make_policy(config.policy, table)
  outcome = outcome_model.fit(table.subset("train"))
  for split in ("validation", "test"):
    part = table.subset(split)
    features = np.asarray(part.features, np.float32)
    arm_logp = np.asarray(policy.arm_log_probs(params, features), np.float64)
    _, cost = outcome.predict(features)
    swept = swept_metrics(part, np.maximum(arm_logp, -1e30), np.asarray(cost, np.float64))
    result[split].update({k: v for k, v in swept.items() if k not in result[split]})


def oracle_result(table):
  """The per-query oracle's metrics and curve (an upper bound, not a router)."""
  from recal_jax import baselines  # pylint: disable=import-outside-toplevel
  return {split: router_metrics(baselines.OracleRouter().fit(part), part)
          for split, part in ((s, table.subset(s)) for s in ("validation", "test"))}


def rl_config(config, method, seed):
  config = copy.deepcopy(config)
  config.method = method
  config.seed = seed
  config.num_devices = 1
  return config


def rl_result(final, records, seconds, **extra):
  """`train_and_evaluate`'s final metrics and records -> one entry of `results.json`."""
  curves = {k: [(r["step"], r[k]) for r in records if k in r]
            for k in ("train/rollout/reward", "train/rollout/accuracy", "train/grad_norm",
                      "validation/accuracy")}
  per_dataset = {}
  for split in ("validation", "test"):
    prefix = f"router/{split}/per_dataset/"
    names = {k[len(prefix):].split("/")[0] for k in final if k.startswith(prefix)}
    per_dataset[split] = {n: {"accuracy": final[f"{prefix}{n}/accuracy"],
                              "cost": final[f"{prefix}{n}/cost"]} for n in sorted(names)}
  result = {split: {"accuracy": final[f"router/{split}/accuracy"],
                    "cost": final[f"router/{split}/cost"],
                    "macro_accuracy": final[f"router/{split}/macro_accuracy"],
                    "macro_cost": final[f"router/{split}/macro_cost"],
                    "per_dataset": per_dataset[split]}
            for split in ("validation", "test")}
  result.update(best_step=final["best_step"], seconds=seconds, curves=curves, **extra)
  return result


def write_json(path, value):
  with open(path + ".tmp", "w") as f:
    json.dump(value, f)
  os.replace(path + ".tmp", path)  # a kill leaves no half-written final.json


def run_rl(method, table, seed, config, workdir):
  """Trains one RL router (or reuses a finished run in `workdir`)."""
  from recal_jax import metrics_writer, train  # pylint: disable=import-outside-toplevel
  from recal_jax import router as router_lib  # pylint: disable=import-outside-toplevel
  done = os.path.join(workdir, "final.json")
  if os.path.exists(done):
    with open(done) as f:
      return json.load(f)
  start = time.time()
  final = train.train_and_evaluate(rl_config(config, method, seed), workdir, table=table,
                                   show_progress=False)
  result = rl_result(final, metrics_writer.read_metrics(workdir), time.time() - start)
  rl_curves(result, table, config, router_lib.Router.load(workdir, text_featurizer=False).params)
  write_json(done, result)
  return result


def run_rl_seeds(method, table, seeds, config, workdirs):
  """Trains the seeds without a `final.json` in one program (`training.seeds`).

  Writes each seed's `final.json` (what `run_rl` reuses). 'seconds' is the
  wall time of the program shared by 'seeds_in_program' seeds, of which
  'compile_seconds' compiling it. Returns how many seeds were trained.
  """
  from recal_jax import metrics_writer  # pylint: disable=import-outside-toplevel
  from recal_jax.training import seeds as seeds_lib  # pylint: disable=import-outside-toplevel
  todo = [(s, w) for s, w in zip(seeds, workdirs)
          if not os.path.exists(os.path.join(w, "final.json"))]
  if not todo:
    return 0
  finals = seeds_lib.train_seeds(rl_config(config, method, todo[0][0]), [s for s, _ in todo],
                                 table=table, workdirs=[w for _, w in todo])
  for (_, workdir), final in zip(todo, finals):
    result = rl_result(final, metrics_writer.read_metrics(workdir), final["seconds/total"],
                       seeds_in_program=len(todo), compile_seconds=final["seconds/compile"])
    rl_curves(result, table, config, final.pop("best_params"))
    write_json(os.path.join(workdir, "final.json"), result)
  return len(todo)


def summarize(runs):
  """{name: [result per seed]} -> {name: mean / std of test figures}."""
  out = {}
  for name, results in runs.items():
    tests = [r["test"] for r in results]
    row = {}
    for key in ("accuracy", "cost", "macro_accuracy", "macro_cost", "auc",
                "acc_at_best_cost", "acc_at_half_best_cost"):
      values = np.array([t.get(key, np.nan) for t in tests])  # no curve: NaN
      row[key] = float(values.mean())
      row[key + "_std"] = float(values.std())
    datasets = tests[0]["per_dataset"].keys()
    row["per_dataset"] = {d: float(np.mean([t["per_dataset"][d]["accuracy"] for t in tests]))
                          for d in datasets}
    row["validation_accuracy"] = float(np.mean([r["validation"]["accuracy"] for r in results]))
    row["num_seeds"] = len(results)
    out[name] = row
  return out


def markdown(summary, dataset_names, title):
  from recal_jax import evaluate  # pylint: disable=import-outside-toplevel
  rows = []
  def by_auc(item):
    auc = item[1].get("auc", float("nan"))
    return -auc if np.isfinite(auc) else float("inf")

  for name, s in sorted(summary.items(), key=by_auc):
    row = {"method": name}
    for key, label in (("auc", "AUC"), ("acc_at_best_cost", "acc @ best cost"),
                       ("acc_at_half_best_cost", "acc @ half best cost")):
      row[label] = f"{s.get(key, np.nan):.3f} ± {s.get(key + '_std', np.nan):.3f}"
    row.update({d: s["per_dataset"].get(d, float("nan")) for d in dataset_names})
    row["macro acc"] = f"{s['macro_accuracy']:.3f} ± {s['macro_accuracy_std']:.3f}"
    row["acc"] = f"{s['accuracy']:.3f} ± {s['accuracy_std']:.3f}"
    row["cost (1e-4 USD)"] = f"{s['cost'] * 1e4:.2f} ± {s['cost_std'] * 1e4:.2f}"
    row["val acc"] = s["validation_accuracy"]
    rows.append(row)
  return f"## {title}\n\n" + evaluate.format_table(rows) + "\n"


def plot_styles(names):
  """A distinct (colour, marker) per curve name: 20 tab20 colours x 6 markers."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  colours = matplotlib.colormaps["tab20"].colors
  markers = "osD^vP"
  return {name: (colours[i % len(colours)], markers[(i // len(colours)) % len(markers)])
          for i, name in enumerate(names)}


def cost_quality_series(summary):
  """The summary rows drawn as a curve and a point: all but the oracle (it has its star)."""
  return [name for name in summary if name.split(" ")[0] != "oracle"]


def plot(runs, summary, table, workdir):
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  from recal_jax import evaluate  # pylint: disable=import-outside-toplevel
  test = table.subset("test")
  fig, ax = plt.subplots(figsize=(8, 6))
  for arm in range(test.num_arms):
    m = split_metrics(test, np.full(test.num_queries, arm))
    ax.scatter(m["cost"], m["accuracy"], marker="x", color="grey")
  oracle = split_metrics(test, evaluate.oracle_choices(test))
  ax.scatter(oracle["cost"], oracle["accuracy"], marker="*", s=150, color="gold", label="oracle")
  points = cost_quality_series(summary)
  styles = plot_styles(points)
  for name in points:
    s = summary[name]
    colour, marker = styles[name]
    front = np.array(runs[name][0]["test"].get("curve", []))
    if len(front) > 1:
      ax.plot(front[:, 0], front[:, 1], "-", lw=1, color=colour)
    ax.errorbar(s["cost"], s["accuracy"], xerr=s["cost_std"], yerr=s["accuracy_std"],
                fmt=marker, color=colour, capsize=2,
                label=f"{name} (AUC {s['auc']:.3f})" if np.isfinite(s.get("auc", np.nan))
                else name)
  ax.set_xscale("log")
  ax.set_xlabel("average cost per query (USD, test)")
  ax.set_ylabel("accuracy (test)")
  ax.legend(fontsize=6, ncol=2)
  fig.tight_layout()
  fig.savefig(os.path.join(workdir, "cost_quality.png"), dpi=120)
  plt.close(fig)

  keys = (("train/rollout/reward", "training reward"), ("validation/accuracy", "validation accuracy"),
          ("train/grad_norm", "gradient norm"))
  fig, axes = plt.subplots(1, 3, figsize=(16, 5))
  for ax, (key, label) in zip(axes, keys):
    for name, results in runs.items():
      curves = [r.get("curves", {}).get(key) for r in results]
      if not curves or not all(curves):
        continue
      length = min(len(c) for c in curves)
      steps = np.array([s for s, _ in curves[0][:length]])
      values = np.array([[v for _, v in c[:length]] for c in curves])
      mean, std = values.mean(0), values.std(0)
      (line,) = ax.plot(steps, mean, label=name, lw=1)
      ax.fill_between(steps, mean - std, mean + std, color=line.get_color(), alpha=0.15)
    ax.set_title(label)
    ax.set_xlabel("step")
  axes[0].legend(fontsize=6)
  fig.tight_layout()
  fig.savefig(os.path.join(workdir, "training_curves.png"), dpi=120)
  plt.close(fig)


def rl_workdir(method, variant, seed):
  suffix = VARIANT_SUFFIX[variant]
  return os.path.join(FLAGS.workdir, "runs", f"{method}{suffix.replace(' +', '_')}",
                      f"seed{seed}")


def quiet_run_logs():
  """Each run's own lines are hidden unless --verbosity=1."""
  previous = logging.get_verbosity()
  if previous < 1:
    logging.set_verbosity(logging.WARNING)
  return previous


def train_vmapped(tables, bar, config, started, timing):
  """Every (variant, method): its seeds in one program; writes their `final.json`."""
  for variant in FLAGS.variants:
    for method in FLAGS.methods:
      logging.info("[%.0fs] %s%s seeds 0-%d", time.time() - started, method,
                   VARIANT_SUFFIX[variant], FLAGS.seeds - 1)
      seeds = list(range(FLAGS.seeds))
      workdirs = [rl_workdir(method, variant, s) for s in seeds]
      start, previous = time.time(), quiet_run_logs()
      try:
        trained = run_rl_seeds(method, tables[variant], seeds, config, workdirs)
      finally:
        logging.set_verbosity(previous)
      timing["rl"] += time.time() - start
      if trained:
        with open(os.path.join(workdirs[-1], "final.json")) as f:
          timing["rl_compile"] += json.load(f)["compile_seconds"]
      bar.update(FLAGS.seeds)


def run_all(tables, runs, bar, config, started, timing):
  """Every seed x variant x (non-RL baselines, RL methods); fills `runs`."""
  for seed in range(FLAGS.seeds):
    for variant in FLAGS.variants:
      table, suffix = tables[variant], VARIANT_SUFFIX[variant]
      for name in NON_RL:
        key = name + (suffix if name in ("knn", "mlp", "erp") else "")
        if key in runs and len(runs[key]) > seed:
          continue  # input-independent baselines run once per seed
        start = time.time()
        if name in SEED_FREE and key in runs:
          runs[key].append(copy.deepcopy(runs[key][0]))
        else:
          runs.setdefault(key, []).append(run_non_rl(name, table, seed))
        timing["non_rl"][name] = timing["non_rl"].get(name, 0.0) + time.time() - start
      for method in FLAGS.methods:
        logging.info("[%.0fs] %s%s seed %d", time.time() - started, method, suffix, seed)
        start, previous = time.time(), quiet_run_logs()
        try:
          result = run_rl(method, table, seed, config, rl_workdir(method, variant, seed))
        finally:
          logging.set_verbosity(previous)
        timing["rl"] += time.time() - start
        runs.setdefault(method + suffix, []).append(result)
        if not FLAGS.vmap_seeds:
          bar.update(1)


def main(argv):
  del argv
  from recal_jax import advantage, train  # pylint: disable=import-outside-toplevel
  from recal_jax.training import console  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  config = FLAGS.config
  if FLAGS.num_train_steps:
    config.num_train_steps = FLAGS.num_train_steps
  for method in FLAGS.methods:
    advantage.method_config(method)  # fail fast on a typo
  os.makedirs(FLAGS.workdir, exist_ok=True)
  # Programs depend on (method, input shape), not on the seed: a persistent
  # cache in the work dir serves a rerun, and --novmap_seeds runs' later seeds.
  jax.config.update("jax_compilation_cache_dir", os.path.join(FLAGS.workdir, "jax_cache"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  load_start = time.time()
  base = train.load_data(config)
  tables = {"features": base, "features+dataset_id": with_dataset_id(base)}
  runs: dict[str, list] = {}
  started = time.time()
  # One bar over all RL runs (each run's own bar is off); ETA from runs done.
  bar = tqdm.tqdm(total=FLAGS.seeds * len(FLAGS.variants) * len(FLAGS.methods),
                  desc="compare", unit="run", disable=not sys.stderr.isatty())
  timing = {"load_data": started - load_start, "non_rl": {}, "rl": 0.0, "rl_compile": 0.0}
  with console.logs_through_tqdm():
    if FLAGS.vmap_seeds:
      train_vmapped(tables, bar, config, started, timing)
    run_all(tables, runs, bar, config, started, timing)
  bar.close()
  test = base.subset("test")
  runs["oracle (bound)"] = [oracle_result(base)]
  summary = summarize(runs)
  results = {"table": base.describe(), "config": json.loads(config.to_json_best_effort()),
             "seeds": FLAGS.seeds, "methods": FLAGS.methods, "summary": summary, "runs": runs,
             "date": time.strftime("%Y-%m-%d"), "seconds": time.time() - started,
             "vmap_seeds": FLAGS.vmap_seeds, "timing": timing}
  with open(os.path.join(FLAGS.workdir, "results.json"), "w") as f:
    json.dump(results, f, indent=1)
  text = (f"# Routing comparison on {base.name}\n\n"
          f"Test split ({test.num_queries} queries); mean ± std over {FLAGS.seeds} seeds; "
          f"per-dataset columns are test accuracy. Hyper-parameters and checkpoints chosen on "
          f"validation. Costs are {'estimated' if base.cost_is_estimated else 'exact'}.\n\n")
  text += markdown(summary, base.dataset_names, "All methods")
  with open(os.path.join(FLAGS.workdir, "results.md"), "w") as f:
    f.write(text)
  plot(runs, summary, base, FLAGS.workdir)
  print(text)


def checked_main(argv):
  """`main` after the config and methods are checked: bad input is one line, exit 2."""
  from experiments import cli  # pylint: disable=import-outside-toplevel
  cli.validate_config(cli.load_config(), methods=FLAGS.methods)
  return main(argv)


if __name__ == "__main__":
  define_flags()
  from experiments import cli  # pylint: disable=import-outside-toplevel
  cli.run(checked_main)
