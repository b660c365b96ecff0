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

Writes `results.json` (every run), `results.md` (test accuracy and cost per
dataset, macro averages, mean and std over seeds), `cost_quality.png` (the
test cost-quality plane: RL routers' operating points, the ERP and kNN curves
over a cost-weight sweep, single arms, oracle) and `training_curves.png`
(reward, validation accuracy and gradient norm over steps, seeds as bands).
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


def split_metrics(table, choices):
  from recal_jax import evaluate  # pylint: disable=import-outside-toplevel
  m = evaluate.route_metrics(table, np.asarray(choices))
  return {"accuracy": m["accuracy"], "cost": m["cost"], "macro_accuracy": m["macro_accuracy"],
          "macro_cost": m["macro_cost"],
          "per_dataset": {k: {"accuracy": v["accuracy"], "cost": v["cost"]}
                          for k, v in m["per_dataset"].items()}}


def run_non_rl(name, table, seed):
  """Fits one non-RL router (hyper-parameters on validation) -> test metrics."""
  from recal_jax import baselines  # pylint: disable=import-outside-toplevel
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
        "erp": (baselines.ERPRouter, {"ridge": [0.1, 1.0, 10.0, 100.0]}),
    }
    make, grid = makers[name]
    selection = baselines.select_on_validation(make, grid, train, val, "accuracy")
    router, params = selection.router, selection.params
  result = {"test": split_metrics(test, router.choose(test)),
            "validation": split_metrics(val, router.choose(val)), "params": params}
  if name in ("erp", "knn"):
    weights = [0.0] + list(np.logspace(1, 5, 13))
    points = [split_metrics(test, router.choose(test, cost_weight=w)) for w in weights]
    result["curve"] = [(p["cost"], p["accuracy"]) for p in points]
  return result


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
  done = os.path.join(workdir, "final.json")
  if os.path.exists(done):
    with open(done) as f:
      return json.load(f)
  start = time.time()
  final = train.train_and_evaluate(rl_config(config, method, seed), workdir, table=table,
                                   show_progress=False)
  result = rl_result(final, metrics_writer.read_metrics(workdir), time.time() - start)
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
    write_json(os.path.join(workdir, "final.json"), result)
  return len(todo)


def summarize(runs):
  """{name: [result per seed]} -> {name: mean / std of test figures}."""
  out = {}
  for name, results in runs.items():
    tests = [r["test"] for r in results]
    row = {}
    for key in ("accuracy", "cost", "macro_accuracy", "macro_cost"):
      values = np.array([t[key] for t in tests])
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
  for name, s in sorted(summary.items(), key=lambda kv: -kv[1]["macro_accuracy"]):
    row = {"method": name}
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
  """The summary rows drawn as points: RL methods, best single, random (oracle has its star)."""
  return [name for name in summary
          if name.split(" ")[0] not in NON_RL + ("oracle",)
          or name.split(" ")[0] in ("best_single", "random")]


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
  sweeps = [name for name in ("erp", "knn") if name in runs and "curve" in runs[name][0]]
  points = cost_quality_series(summary)
  styles = plot_styles(sweeps + points)
  for name in sweeps:
    pts = np.array(evaluate.pareto_front(runs[name][0]["curve"]))
    ax.plot(pts[:, 0], pts[:, 1], "--", color=styles[name][0],
            label=f"{name} (cost-weight sweep)")
  for name in points:
    s = summary[name]
    colour, marker = styles[name]
    ax.errorbar(s["cost"], s["accuracy"], xerr=s["cost_std"], yerr=s["accuracy_std"],
                fmt=marker, color=colour, label=name, capsize=2)
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
  from recal_jax import advantage, evaluate, train  # pylint: disable=import-outside-toplevel
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
  oracle = split_metrics(test, evaluate.oracle_choices(test))
  runs["oracle (bound)"] = [{"test": oracle, "validation": split_metrics(
      base.subset("validation"), evaluate.oracle_choices(base.subset("validation")))}]
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
