"""The boundary of the absl apps (train, compare, route): flags, config, errors.

A user's mistake (a bad flag, a config file that does not exist, a misspelt
config field, an unknown method, bad numbers, malformed data) ends the app
with ONE line on stderr, `error: <what is wrong, naming the flag / file /
field>`, and exit status 2 (`EXIT_USER_ERROR`). Anything else is a crash: one
line `crash: <Type>: <message> ...`, exit status 1. The traceback is printed
only with `--verbosity=1` (absl's flag; `-v 1`).

  run(main)               app.run with the flag parser and error boundary
  load_config()           FLAGS.config, or a ConfigError naming the flag / file
  validate_config(config) checks the fields the trainer reads, before any work
"""

from __future__ import annotations

import difflib
import json
import math
import os
import sys
import traceback
from typing import Any, Callable, Sequence

from absl import app
from absl import flags

FLAGS = flags.FLAGS
EXIT_USER_ERROR = 2
EXIT_CRASH = 1


class ConfigError(ValueError):
  """A config value or flag that cannot be used; the message names the flag."""


def _user_errors() -> tuple[type[BaseException], ...]:
  """The error types that mean "your input is wrong" (imported lazily: JAX)."""
  from recal_jax import checkpointing  # pylint: disable=import-outside-toplevel
  from recal_jax import train  # pylint: disable=import-outside-toplevel
  from recal_jax.data import minilm  # pylint: disable=import-outside-toplevel
  # ValueError covers RoutingDataError, ConfigError and the trainer's checks
  # (e.g. a work dir holding another table's checkpoints).
  return (ValueError, FileNotFoundError, NotADirectoryError, train.NonFiniteError,
          checkpointing.CheckpointError, minilm.MiniLMNotInstalledError, app.UsageError)


def one_line(message: Any) -> str:
  """`message` with its lines joined by ' | ' (multi-line library messages)."""
  lines = [line.strip() for line in str(message).strip().splitlines() if line.strip()]
  return " | ".join(lines)


def _verbose() -> bool:
  try:
    return FLAGS["verbosity"].value >= 1
  except (KeyError, flags.UnparsedFlagAccessError):
    return False


def report(error: BaseException, user_error: bool) -> int:
  """Prints the one-line message (traceback at --verbosity>=1); -> exit status."""
  if _verbose():
    traceback.print_exception(error, file=sys.stderr)
  message = one_line(error) or type(error).__name__
  if user_error:
    print(f"error: {message}", file=sys.stderr, flush=True)
    return EXIT_USER_ERROR
  print(f"crash: {type(error).__name__}: {message} (rerun with --verbosity=1 for the "
        "traceback)", file=sys.stderr, flush=True)
  return EXIT_CRASH


def parse_flags(argv: Sequence[str]) -> list[str]:
  """absl's flag parsing, but a bad flag is one line and exit status 2."""
  try:
    return FLAGS(argv)
  except flags.Error as e:
    message = f"{one_line(e)} (see --helpshort)"
  except (AttributeError, KeyError, TypeError, ValueError, OSError) as e:
    # ml_collections applies `--config.a.b=` overrides while parsing.
    message = None
    for arg in argv:
      if arg.startswith("--") and "=" in arg and arg.split("=", 1)[1].endswith(".py"):
        name, path = arg[2:].split("=", 1)
        if "." not in name and os.path.isfile(path):
          try:
            message = _explain_bad_override(name, path, argv)
          except Exception:  # pylint: disable=broad-except
            pass
          if message:
            break
    message = message or one_line(e)
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(EXIT_USER_ERROR)


def run(main: Callable[[list[str]], Any]) -> None:
  """`app.run(main)` with one-line errors and exit status 0 / 1 / 2 (or main's int)."""

  def guarded(argv):
    try:
      status = main(argv)
    except (SystemExit, KeyboardInterrupt):
      raise
    except Exception as e:  # pylint: disable=broad-except
      sys.exit(report(e, isinstance(e, _user_errors())))
    sys.exit(status if isinstance(status, int) else 0)

  app.run(guarded, flags_parser=parse_flags)


# ------------------------------------------------------------------ config
def _config_path(flag_name: str) -> str:
  from ml_collections import config_flags  # pylint: disable=import-outside-toplevel
  return config_flags.get_config_filename(FLAGS[flag_name]).split(":", 1)[0]


def _override_paths(flag_name: str, argv: Sequence[str]) -> list[tuple[str, str]]:
  """[(dotted field path, the flag as written)] of `--<flag>.<path>=...` args."""
  prefix = f"--{flag_name}."
  out = []
  for arg in argv:
    if arg.startswith(prefix):
      path = arg[len(prefix):].split("=", 1)[0]
      out.append((path, arg))
  return out


def suggest(name: str, choices: Sequence[str]) -> str:
  """"; did you mean 'x'?" for the closest of `choices` (difflib), or ''."""
  close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
  return f"; did you mean {close[0]!r}?" if close else ""


def _explain_bad_override(flag_name: str, path: str, argv: Sequence[str]) -> str | None:
  """Names the first `--config.a.b=` override whose field does not exist."""
  import importlib.util  # pylint: disable=import-outside-toplevel
  spec = importlib.util.spec_from_file_location("_recal_config_check", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  base = module.get_config()
  for dotted, arg in _override_paths(flag_name, argv):
    node, walked = base, []
    for part in dotted.split("."):
      keys = list(node.keys()) if hasattr(node, "keys") else []
      if part not in keys:
        where = f"'{'.'.join(walked)}'" if walked else "the config"
        return (f"{arg.split('=', 1)[0]}: {where} has no field {part!r}"
                f"{suggest(part, keys)} (config file {path})")
      node, walked = node[part], walked + [part]
  return None


def load_config(flag_name: str = "config", argv: Sequence[str] | None = None):
  """The parsed config flag, or a `ConfigError` naming the file / flag / field."""
  path = _config_path(flag_name)
  if not os.path.isfile(path):
    raise ConfigError(f"--{flag_name}={path}: config file does not exist")
  try:
    return getattr(FLAGS, flag_name)
  except Exception as e:  # pylint: disable=broad-except
    explained = None
    try:
      explained = _explain_bad_override(flag_name, path, argv or sys.argv)
    except Exception:  # pylint: disable=broad-except
      pass  # the config file itself is broken: report the original error
    raise ConfigError(explained or f"--{flag_name}={path}: {one_line(e)}") from e


def _number(config, field: str, *, minimum: float, strict: bool, integer: bool = False,
            why: str = "") -> None:
  value = config
  for part in field.split("."):
    value = value[part]
  flag = f"--config.{field}={value}"
  ok = isinstance(value, (int, float)) and not isinstance(value, bool)
  ok = ok and math.isfinite(value) and (value > minimum if strict else value >= minimum)
  if ok and integer:
    ok = float(value).is_integer()
  if not ok:
    kind = "an integer" if integer else "a number"
    relation = ">" if strict else ">="
    raise ConfigError(f"{flag}: must be {kind} {relation} {minimum:g}{why}")


def method_overrides(config) -> dict:
  """`config.method_overrides` (nested fields, or the older JSON string) as a dict.

  Only the fields that are set (not None); lists become tuples.
  """
  raw = config.get("method_overrides", None)
  if raw is None or raw == "":
    return {}
  if isinstance(raw, str):
    try:
      raw = json.loads(raw)
    except json.JSONDecodeError as e:
      raise ConfigError(f"--config.method_overrides: invalid JSON ({e.msg})") from None
    if not isinstance(raw, dict):
      raise ConfigError("--config.method_overrides: must be a JSON object of ReCalConfig fields")
  def plain(value):  # nested fields (None: unset) -> plain values
    if hasattr(value, "items"):
      return {k: plain(v) for k, v in value.items() if v is not None} or None
    return tuple(value) if isinstance(value, list) else value
  return {k: plain(v) for k, v in raw.items() if plain(v) is not None}


def validate_config(config, methods: Sequence[str] | None = None) -> None:
  """Checks the fields `train_and_evaluate` reads; `ConfigError` names the flag.

  Catches before anything is loaded or compiled: an unknown method (with the
  closest name), a bad `method_overrides` field (unknown, wrong type or
  value), `batch_size` / `group_size` < 1, a `cost_scale` or learning rate
  that is not a positive finite number, bad split fractions. `methods`: the
  methods a comparison will run (each checked with the config's overrides).
  """
  for method in methods or ():
    check_method(config, method, flag="--methods")
  check_method(config, config.method)
  _number(config, "batch_size", minimum=1, strict=False, integer=True,
          why=" (queries per step)")
  _number(config, "group_size", minimum=1, strict=False, integer=True,
          why=" (routes sampled per query)")
  _number(config, "cost_scale", minimum=0, strict=True,
          why=" (the cost reward is -cost_usd / cost_scale)")
  _number(config, "learning_rate", minimum=0, strict=True)
  if config.data.get("name", "") == "jsonl" and not config.data.get("path", ""):
    raise ConfigError("--config.data.path is empty: give the path of your JSONL log "
                      "(--config.data.path=/path/to/logs.jsonl)")
  fractions = config.data.get("split_fractions", None)
  if fractions is not None:
    fractions = tuple(fractions)
    if (len(fractions) != 3 or not all(isinstance(f, (int, float)) and f >= 0 for f in fractions)
        or abs(sum(fractions) - 1) > 1e-6):
      raise ConfigError(f"--config.data.split_fractions={fractions}: need three numbers >= 0 "
                        "(train, validation, test) that sum to 1")


def check_method(config, method: str, flag: str = "--config.method") -> None:
  """`method` is known and `config.method_overrides` applies to it; else ConfigError."""
  import dataclasses  # pylint: disable=import-outside-toplevel
  from recal_jax import advantage  # pylint: disable=import-outside-toplevel
  if method not in advantage.METHODS:
    raise ConfigError(f"{flag}={method}: unknown method{suggest(method, advantage.METHODS)}"
                      f" (known: {', '.join(sorted(advantage.METHODS))})")
  fields = {f.name for f in dataclasses.fields(advantage.ReCalConfig)}
  overrides = method_overrides(config)
  for name, value in overrides.items():
    field_flag = f"--config.method_overrides.{name}"
    if name not in fields:
      raise ConfigError(f"{field_flag}: ReCalConfig has no field {name!r}{suggest(name, fields)}")
    try:
      advantage.method_config(method, **{name: value})
    except (TypeError, ValueError) as e:
      raise ConfigError(f"{field_flag}={value!r}: {one_line(e)}") from None
  try:
    advantage.method_config(method, **overrides)
  except (TypeError, ValueError) as e:
    raise ConfigError(f"--config.method_overrides: {one_line(e)}") from None
  weights = advantage.method_config(method, **overrides).weight_vector()
  if not all(isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w)
             for w in weights):
    raise ConfigError(f"--config.method_overrides.component_weights: need finite numbers, "
                      f"got {overrides.get('component_weights')!r}")
