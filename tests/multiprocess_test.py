"""Multi-process training for real: 2 processes x 2 CPU devices on localhost.

Each process runs the same `python -m experiments.train` command as a
single-host run, with `--config.distributed=True` and the environment a
cluster launcher would set (`JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`,
`JAX_PROCESS_ID`; gloo CPU collectives). The final parameters must equal a
1-process, 4-device run; a SIGTERM sent to one process must make both save
the same step (JAX's preemption sync point, `reached_preemption`) and exit
75, and the rerun must resume to the same final state.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from recal_jax import checkpointing
from recal_jax import train

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK_CONFIG = os.path.join(REPO_ROOT, "experiments", "configs", "quick.py")
NUM_STEPS = 16
FLAGS = (f"--config.num_train_steps={NUM_STEPS}", "--config.batch_size=16",
         "--config.data.num_queries=300", "--config.checkpoint_every_steps=8",
         "--config.eval_every_steps=8", "--config.log_every_steps=2",
         "--config.num_devices=0", "--config.adam_eps=1e-6")
TIMEOUT_SECONDS = 240


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _env(tmp_path, devices: int, **extra) -> dict:
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
             JAX_COMPILATION_CACHE_DIR=str(tmp_path.parent / "multiprocess_cache"),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  env.update(extra)
  return env


def _start(workdir, env, log_path, distributed=False):
  command = [sys.executable, "-m", "experiments.train", f"--config={QUICK_CONFIG}",
             f"--workdir={workdir}", *FLAGS, f"--config.distributed={distributed}"]
  with open(log_path, "w") as log:
    return subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT)


def _start_pair(workdir, tmp_path, name):
  port = _free_port()
  return [_start(workdir, _env(tmp_path, 2, JAX_COORDINATOR_ADDRESS=f"localhost:{port}",
                               JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(i),
                               JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo"),
                 tmp_path / f"{name}{i}.log", distributed=True) for i in range(2)]


def _wait(processes, tmp_path, name):
  codes = []
  for i, process in enumerate(processes):
    try:
      codes.append(process.wait(timeout=TIMEOUT_SECONDS))
    except subprocess.TimeoutExpired:
      for p in processes:
        p.kill()
      codes.append("timeout")
  logs = [open(tmp_path / f"{name}{i}.log").read() for i in range(len(processes))]
  return codes, logs


def _params(workdir, step):
  """The params item, restored on one device whatever topology saved it."""
  checkpointer = checkpointing.Checkpointer(workdir)
  try:
    return jax.tree.map(np.asarray, checkpointer.restore_params(step))
  finally:
    checkpointer.close()


def _logged_steps(workdir):
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  steps = []
  for line in open(path):
    match = re.match(r'\{"step": (\d+), "train/', line)
    if match:
      steps.append(int(match.group(1)))
  return steps


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """A 1-process, 4-device run."""
  tmp_path = tmp_path_factory.mktemp("single")
  workdir = str(tmp_path / "workdir")
  process = _start(workdir, _env(tmp_path, 4), tmp_path / "single0.log")
  codes, logs = _wait([process], tmp_path, "single")
  assert codes == [0], logs[0][-3000:]
  return _params(workdir, NUM_STEPS)


@pytest.mark.slow
def test_two_processes_equal_one_process_then_preemption_resumes(reference, tmp_path):
  start = time.monotonic()
  workdir = str(tmp_path / "workdir")
  codes, logs = _wait(_start_pair(workdir, tmp_path, "full"), tmp_path, "full")
  assert codes == [0, 0], "\n".join(log[-2000:] for log in logs)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-6),
               _params(workdir, NUM_STEPS), reference)
  seconds = time.monotonic() - start

  # SIGTERM to process 1 only (process 0 writes metrics.jsonl) once step 4 is logged.
  preempted = str(tmp_path / "preempted")
  processes = _start_pair(preempted, tmp_path, "term")
  deadline = time.monotonic() + TIMEOUT_SECONDS
  while time.monotonic() < deadline and all(p.poll() is None for p in processes):
    if any(s >= 4 for s in _logged_steps(preempted)):
      os.kill(processes[1].pid, signal.SIGTERM)
      break
    time.sleep(0.01)
  codes, logs = _wait(processes, tmp_path, "term")
  context = "\n".join(log[-2000:] for log in logs)
  assert codes == [train.PREEMPTED_EXIT_CODE] * 2, context
  saved = [re.findall(r"preempted by SIGTERM at step (\d+)", log) for log in logs]
  assert saved[0] and saved[0] == saved[1], context  # the same step on both
  step = int(saved[0][0])
  assert 4 <= step < NUM_STEPS, context
  codes, logs = _wait(_start_pair(preempted, tmp_path, "rerun"), tmp_path, "rerun")
  assert codes == [0, 0], "\n".join(log[-2000:] for log in logs)
  assert f"Resumed from step {step}" in logs[0]
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-6),
               _params(preempted, NUM_STEPS), reference)
  print(f"2-process run: {seconds:.0f} s")
