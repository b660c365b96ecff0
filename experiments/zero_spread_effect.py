r"""Training with and without exact zeros for groups without spread (issue 11, item 1).

Before issue 11 a group whose rollouts all had the same reward got float32
noise as its advantage (the float32 mean of n equal values is not always the
value), blown up to O(1) by the per-dataset normalisation. This script
compares the validation curves of runs of the same config and seeds on the
code before (old) and after (new) the fix, from their `metrics.jsonl`:

  # old code (a checkout of main before the fix), then the new one:
  (cd /work/main && for s in 0 1 2; do RECAL_ROUTING_DATA=/work/shared/routing_data \
     python -m experiments.train --config=experiments/configs/seven_datasets.py \
     --config.seed=$s --workdir=/tmp/core_old_s$s; done)
  for s in 0 1 2; do RECAL_ROUTING_DATA=/work/shared/routing_data \
     python -m experiments.train --config=experiments/configs/seven_datasets.py \
     --config.seed=$s --workdir=/tmp/core_new_s$s; done
  python -m experiments.zero_spread_effect --old /tmp/core_old_s{0,1,2} \
     --new /tmp/core_new_s{0,1,2}

It prints, per evaluation step, validation accuracy and training reward
(mean over the runs of each side), then per run the best validation
accuracy, its step and the last one.
"""

from __future__ import annotations

import argparse
import json
import pathlib

import numpy as np


def read(workdir: str) -> dict[int, dict]:
  """step -> merged metrics of that step."""
  out: dict[int, dict] = {}
  for line in pathlib.Path(workdir, "metrics.jsonl").read_text().splitlines():
    row = json.loads(line)
    out.setdefault(int(row["step"]), {}).update(row)
  return out


def series(runs, key):
  steps = sorted(set.intersection(*(set(s for s, r in run.items() if key in r)
                                    for run in runs)))
  return steps, np.array([[run[s][key] for s in steps] for run in runs])


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--old", nargs="+", required=True)
  parser.add_argument("--new", nargs="+", required=True)
  args = parser.parse_args(argv)
  sides = {"old": [read(d) for d in args.old], "new": [read(d) for d in args.new]}
  keys = ("validation/accuracy", "train/rollout/reward",
          "train/advantage/zero_spread_groups", "train/advantage/abs_mean")
  table = {}
  for side, runs in sides.items():
    for key in keys:
      table[side, key] = dict(zip(*(lambda s, v: (s, v.mean(0)))(*series(runs, key))))
  print("| step | val acc old | val acc new | train reward old | train reward new "
        "| zero-spread groups old | new | mean abs A old | new |")
  print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
  steps = sorted(table["old", keys[0]])
  for step in steps:
    cells = []
    for key in keys:
      for side in ("old", "new"):
        value = table[side, key].get(step)
        cells.append("" if value is None else f"{value:.3f}")
    print(f"| {step} | " + " | ".join(cells) + " |")
  print()
  for side, runs in sides.items():
    for path, run in zip(getattr(args, side), runs):
      steps, acc = series([run], "validation/accuracy")
      best = int(np.argmax(acc[0]))
      print(f"{side} {path}: best validation accuracy {acc[0, best]:.3f} at step "
            f"{steps[best]}, last {acc[0, -1]:.3f} at step {steps[-1]}")
  for side in ("old", "new"):
    steps, acc = series(sides[side], "validation/accuracy")
    late = [i for i, s in enumerate(steps) if s >= 100]
    print(f"{side}: mean over runs of the best validation accuracy "
          f"{acc.max(1).mean():.4f}, of the last {acc[:, -1].mean():.4f}, of the "
          f"drop from best to last {(acc.max(1) - acc[:, -1]).mean():.4f}; mean "
          f"validation accuracy over steps >= 100 {acc[:, late].mean():.4f}")


if __name__ == "__main__":
  main()
