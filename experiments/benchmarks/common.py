"""Helpers shared by the benchmark scripts: machine, load, RESULTS.md sections."""

from __future__ import annotations

import datetime
import os
import pathlib
import platform
import shlex
import sys
import tempfile

RESULTS_FILE = pathlib.Path(__file__).resolve().parent / "RESULTS.md"


def machine_description() -> str:
  """'<nproc> cores (nproc), <CPU model>; jax <version> (<backend>)'."""
  cpu_model = platform.processor() or "unknown cpu"
  try:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        cpu_model = line.split(":", 1)[1].strip()
        break
  except OSError:
    pass
  import jax  # pylint: disable=import-outside-toplevel
  return (f"{os.cpu_count()} cores (nproc), {cpu_model}; jax {jax.__version__} "
          f"({jax.default_backend().upper()} backend, {jax.device_count()} device(s))")


def load_average() -> str:
  try:
    return " ".join(pathlib.Path("/proc/loadavg").read_text().split()[:3])
  except OSError:
    return "n/a"


def command_line(module: str, argv) -> str:
  args = argv if argv is not None else sys.argv[1:]
  return " ".join([f"python -m {module}"] + [shlex.quote(a) for a in args])


def header_line(script: str, loads: list[str], wall_s: float) -> str:
  return (f"Written by `experiments/benchmarks/{script}` on "
          f"{datetime.datetime.now():%Y-%m-%d %H:%M}; machine: {machine_description()}; "
          f"load average (1, 5, 15 min) at start {loads[0]}, at end {loads[-1]}; "
          f"wall time {wall_s:.0f} s.")


def write_section(section: str, text: str, path: pathlib.Path = RESULTS_FILE) -> None:
  """Replaces the `section` ('## Name') of `path`, or appends it; atomic.

  Read-modify-write right before writing (other benchmarks own other
  sections of the same file), then `os.replace` of a temp file.
  """
  text = text.rstrip("\n") + "\n"
  old = path.read_text() if path.exists() else "# Benchmarks\n"
  start = old.find(section + "\n")
  if start > 0 and old[start - 1] != "\n":
    start = -1
  if start < 0:
    new = old.rstrip("\n") + "\n\n" + text
  else:
    nxt = old.find("\n## ", start + len(section))
    rest = "" if nxt < 0 else "\n" + old[nxt + 1:]
    new = old[:start] + text + rest
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".RESULTS.", suffix=".tmp")
  try:
    with os.fdopen(fd, "w") as f:
      f.write(new)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def markdown_table(header: list[str], rows: list[list]) -> str:
  lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
  cell = lambda c: str(c).replace("|", "\\|")  # arm names hold '|'
  lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
  return "\n".join(lines)
