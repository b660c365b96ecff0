"""README.md's own paths, read from README.md itself so that drift breaks this test.

In order, in a temporary directory: command 1 of "Set up" (train the quick
router), then the route command, then the Python snippet. The fast test adds
step overrides to command 1; the slow test (CI: `pytest -m slow`) runs it
exactly as written.
"""

import json
import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README_WORKDIR = "/tmp/recal_quick"


def _readme() -> str:
  with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
    return f.read()


def _blocks(language: str) -> list[str]:
  return re.findall(rf"```{language}\n(.*?)```", _readme(), flags=re.S)


def readme_paths():
  """-> (training command 1 [argv], route block lines, Python snippet), as in README.md."""
  train_line = next(line for block in _blocks("bash") for line in block.splitlines()
                    if "experiments.train --config=experiments/configs/quick.py" in line
                    and line.startswith("pip install -e . &&"))
  train_command = train_line.split("&&", 1)[1].split()
  assert train_command[:3] == ["python", "-m", "experiments.train"], train_line
  route_block = next(b for b in _blocks("bash") if f"experiments.route --workdir={README_WORKDIR}" in b)
  snippet = next(b for b in _blocks("python") if f'Router.load("{README_WORKDIR}")' in b)
  assert f"--workdir={README_WORKDIR}" in train_line
  return train_command, [l for l in route_block.splitlines() if l.strip()], snippet


def _env():
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  # A reader's CPU is one JAX device: leave out the test session's fake ones (conftest.py).
  env["XLA_FLAGS"] = re.sub(r"--xla_force_host_platform_device_count=\d+", "",
                            env.get("XLA_FLAGS", "")).strip()
  env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
  return env


def run_readme_sequence(tmp_path, extra_train_args=()):
  train_command, route_lines, snippet = readme_paths()
  workdir = str(tmp_path / "recal_quick")
  argv = [sys.executable] + [a.replace(README_WORKDIR, workdir) for a in train_command[1:]]
  train = subprocess.run(argv + list(extra_train_args), cwd=REPO, env=_env(), text=True,
                         capture_output=True, timeout=1200)
  assert train.returncode == 0, train.stderr[-3000:]
  assert "| trained router" in train.stdout and "| best single arm" in train.stdout

  for line in route_lines:
    line = line.replace(README_WORKDIR, workdir)
    if line.startswith("python "):
      line = sys.executable + line[len("python"):]
    done = subprocess.run(["bash", "-c", line], cwd=tmp_path, env=_env(), text=True,
                          capture_output=True, timeout=600)
    assert done.returncode == 0, (line, done.stderr[-3000:])
    if "experiments.route" in line:  # quiet by default: no Orbax / backend INFO lines
      assert len(done.stderr.splitlines()) <= 5, done.stderr[-3000:]
  records = [json.loads(l) for l in done.stdout.splitlines()]
  queries = [json.loads(l) for l in (tmp_path / "queries.jsonl").read_text().splitlines()]
  assert len(records) == len(queries) >= 1
  for record in records:
    assert {"model", "strategy", "expected_cost_usd", "probability"} <= set(record)

  python = subprocess.run([sys.executable, "-c", snippet.replace(README_WORKDIR, workdir)],
                          cwd=tmp_path, env=_env(), text=True, capture_output=True, timeout=600)
  assert python.returncode == 0, python.stderr[-3000:]
  assert "'model':" in python.stdout and "'expected_cost'" in python.stdout.replace(
      "expected_cost_usd", "expected_cost")


def test_readme_paths_are_found():
  train_command, route_lines, snippet = readme_paths()
  assert any("experiments.route" in l for l in route_lines)
  assert "route(" in snippet


def test_readme_train_then_route_then_python_short(tmp_path):
  """Command 1 with fewer steps, then the routing examples exactly as written.

  Chunks of 25 steps (the quick config logs every 25): one compiled chunk program.
  """
  run_readme_sequence(tmp_path, ["--config.num_train_steps=50", "--config.eval_every_steps=25",
                                 "--config.checkpoint_every_steps=25"])


@pytest.mark.slow
def test_readme_train_then_route_then_python_as_written(tmp_path):
  run_readme_sequence(tmp_path)
