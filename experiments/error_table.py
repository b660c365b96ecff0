r"""The apps' answer to bad input, as a markdown table (issue 13's closing table).

  python -m experiments.error_table [--workdir=/tmp/recal_error_table]

Runs `experiments.train`, `experiments.compare` and `experiments.route` with
each bad input (in parallel subprocesses; a tiny run first, for the cases
that need a trained work dir) and prints, per case, the exit status and the
one `error:` / `warning` line the app gave. `tests/cli_test.py` asserts the
same messages; this script only shows them.
"""

from __future__ import annotations

import os
import subprocess
import sys

from absl import app
from absl import flags

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", "/tmp/recal_error_table", "Scratch directory.")

QUICK = "experiments/configs/quick.py"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(commands):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  procs = [subprocess.Popen([sys.executable, "-m", *c], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE) for c in commands]
  return [(p.returncode, out, err) for p, (out, err) in ((p, p.communicate(timeout=600))
                                                        for p in procs)]


def _message(stdout: str, stderr: str) -> str:
  """The app's own line: 'error:' / 'crash:', else a per-line error of the
  query file ('<file>:<line>: ...'), else a warning, else ''."""
  lines = (stderr + "\n" + stdout).splitlines()
  for match in (lambda b: b.lower().startswith(("error:", "crash:")),
                lambda b: b.startswith("/") and ".jsonl:" in b,
                lambda b: b.lower().startswith("warning")):
    for line in lines:
      body = line.split("] ", 1)[-1] if line[:1] in "IWE" and "] " in line else line
      if match(body):
        return body.strip()
  return ""


def main(argv):
  del argv
  work = FLAGS.workdir
  os.makedirs(work, exist_ok=True)
  bad = os.path.join(work, "bad.jsonl")
  with open(bad, "w") as f:
    f.write('{"query_id": "a", "query": "x", "dataset": "d", "outcomes": {"m": {"score": 2}}}\n')
  queries = os.path.join(work, "queries.jsonl")
  with open(queries, "w") as f:
    f.write('{"query": "What is 17 * 23?", "qeury_id": "q1"}\n')
  trained = os.path.join(work, "trained")
  small = [f"--config={QUICK}", "--config.num_train_steps=4", "--config.eval_every_steps=2",
           "--config.checkpoint_every_steps=2", "--config.log_every_steps=2"]
  if not os.path.exists(os.path.join(trained, "config.json")):
    (rc, _, err), = _run([["experiments.train", f"--workdir={trained}", *small]])
    if rc:
      raise SystemExit(f"the small training run failed:\n{err[-2000:]}")
  train = lambda name, *a: ["experiments.train", f"--workdir={os.path.join(work, name)}", *a]
  route = lambda *a: ["experiments.route", f"--workdir={trained}", f"--queries={queries}", *a]
  cases = [
      ("malformed data (score 2)", train("w1", f"--config={QUICK}", f"--config.data.name=jsonl:{bad}")),
      ("unknown method", train("w2", f"--config={QUICK}", "--config.method=recall")),
      ("mistyped config field", train("w3", f"--config={QUICK}", "--config.batch_sise=3")),
      ("config file that does not exist", train("w4", "--config=experiments/configs/nope.py")),
      ("batch_size=0", train("w5", f"--config={QUICK}", "--config.batch_size=0")),
      ("cost_scale=0", train("w6", f"--config={QUICK}", "--config.cost_scale=0")),
      ("bad method override field", train("w7", f"--config={QUICK}",
                                          "--config.method_overrides.componet_weights=(1,1,1)")),
      ("bad method override value", train("w8", f"--config={QUICK}",
                                          "--config.method_overrides.variance_h=sdt")),
      ("negative num_train_steps", train("w9", f"--config={QUICK}",
                                         "--config.num_train_steps=-5")),
      ("resume with another method", ["experiments.train", f"--workdir={trained}", *small,
                                      "--config.method=grpo"]),
      ("compare: unknown method", ["experiments.compare", f"--config={QUICK}",
                                   f"--workdir={os.path.join(work, 'c1')}",
                                   "--methods=recal,grpoo"]),
      ("route --checkpoint=bogus", route("--checkpoint=bogus")),
      ("route negative --budget", route("--budget=-1")),
      ("route --budget and --cost_weight", route("--budget=0.001", "--cost_weight=3")),
      ("route: unknown key in a query line", route()),
  ]
  results = _run([c for _, c in cases])
  print("| bad input | exit status | message |")
  print("|---|---:|---|")
  for (name, _), (rc, out, err) in zip(cases, results):
    message = _message(out, err).replace("|", "\\|")
    print(f"| {name} | {rc} | {message[:300]} |")


if __name__ == "__main__":
  app.run(main)
