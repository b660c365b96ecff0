"""The apps' boundary (experiments/cli.py): one-line errors, exit status 2 / 1, flags checked once."""

import os
import subprocess
import sys

import pytest

from experiments import cli
from experiments.configs import quick

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK = "experiments/configs/quick.py"


def _run_all(commands, cwd):
  """Starts every command at once (they only import and fail), -> [(rc, stdout, stderr)]."""
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  procs = [subprocess.Popen([sys.executable, "-m", *c], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE) for c in commands]
  out = []
  for p in procs:
    stdout, stderr = p.communicate(timeout=300)
    out.append((p.returncode, stdout, stderr))
  return out


def _error_line(stderr: str) -> str:
  """The app's own message: the one line starting 'error:' (absl INFO lines aside)."""
  lines = [l for l in stderr.splitlines() if l.startswith(("error:", "crash:"))]
  assert len(lines) == 1, stderr
  assert "Traceback" not in stderr, stderr
  return lines[0]


@pytest.fixture(scope="module")
def bad_jsonl(tmp_path_factory):
  path = tmp_path_factory.mktemp("data") / "bad.jsonl"
  path.write_text('{"query_id": "a", "query": "x", "dataset": "d", "outcomes": {"m": {"score": 2}}}\n')
  return str(path)


TRAIN_CASES = [
    # (extra args, what the single error line must contain)
    (["--config=experiments/configs/nope.py"], "experiments/configs/nope.py: config file does not exist"),
    ([f"--config={QUICK}", "--config.batch_sise=3"], "did you mean 'batch_size'?"),
    ([f"--config={QUICK}", "--config.data.nmae=x"], "'data' has no field 'nmae'; did you mean 'name'?"),
    ([f"--config={QUICK}", "--config.method=recall"], "--config.method=recall: unknown method; did you mean 'recal'?"),
    ([f"--config={QUICK}", "--config.batch_size=0"], "--config.batch_size=0: must be an integer >= 1"),
    ([f"--config={QUICK}", "--config.cost_scale=0"], "--config.cost_scale=0.0: must be a number > 0"),
    ([f"--config={QUICK}", "--config.method_overrides.componet_weights=(1,1,1)"],
     "'method_overrides' has no field 'componet_weights'; did you mean 'component_weights'?"),
    ([f"--config={QUICK}", "--config.method_overrides.variance_h=sdt"],
     "--config.method_overrides.variance_h='sdt': ReCalConfig.variance_h must be one of"),
    ([f"--config={QUICK}", "--config.method_overrides.component_weights.cots=0.3"],
     "'method_overrides.component_weights' has no field 'cots'; did you mean 'cost'?"),
    ([f"--config={QUICK}", "--config.method_overrides.component_weights.cost=nan"],
     "--config.method_overrides.component_weights: need finite numbers"),
    ([f"--config={QUICK}", "--config.method_overrides.eps=abc"],
     "--config.method_overrides.eps=abc: could not convert string to float"),
]


@pytest.mark.slow
def test_train_bad_inputs_are_one_line_with_exit_status_2(tmp_path, bad_jsonl):
  cases = TRAIN_CASES + [([f"--config={QUICK}", f"--config.data.name=jsonl:{bad_jsonl}"],
                          f"{bad_jsonl}:1: ")]
  results = _run_all([["experiments.train", f"--workdir={tmp_path / 'w'}", *args]
                      for args, _ in cases], REPO)
  for (args, expected), (rc, _, stderr) in zip(cases, results):
    line = _error_line(stderr)
    assert rc == 2, (args, rc, stderr)
    assert line.startswith("error: ") and expected in line, (args, line)
  assert not os.path.exists(tmp_path / "w" / "checkpoints")  # nothing ran


@pytest.mark.slow
def test_compare_checks_config_and_methods_first(tmp_path):
  results = _run_all([
      ["experiments.compare", f"--config={QUICK}", f"--workdir={tmp_path}",
       "--methods=recal,grpoo"],
      ["experiments.compare", f"--config={QUICK}", f"--workdir={tmp_path}",
       "--config.cost_scale=0"],
  ], REPO)
  assert results[0][0] == 2 and "--methods=grpoo: unknown method; did you mean 'grpo'?" in \
      _error_line(results[0][2])
  assert results[1][0] == 2 and "--config.cost_scale=0.0" in _error_line(results[1][2])
  assert not os.listdir(tmp_path)


@pytest.mark.slow
def test_route_flags_are_checked_once_before_loading(tmp_path):
  queries = tmp_path / "q.jsonl"
  queries.write_text("".join(f'{{"query": "question {i}"}}\n' for i in range(5)))
  missing = str(tmp_path / "no_such_workdir")  # the flags fail before it is looked at
  cases = [
      (["--checkpoint=bogus"], "--checkpoint=bogus: must be 'best', 'latest' or a step number"),
      (["--budget=-1"], "--budget=-1.0: must be a finite number >= 0"),
      (["--budget=0.001", "--cost_weight=3"], "give --budget or --cost_weight, not both"),
      (["--cost_weight=nan"], "--cost_weight=nan: must be a finite number >= 0"),
      ([], "is not a training work dir"),
  ]
  results = _run_all([["experiments.route", f"--workdir={missing}", f"--queries={queries}", *a]
                      for a, _ in cases], REPO)
  for (args, expected), (rc, stdout, stderr) in zip(cases, results):
    assert rc == 2, (args, stderr)
    assert expected in _error_line(stderr), (args, stderr)
    assert stdout == ""


def test_validate_config_in_process():
  config = quick.get_config()
  cli.validate_config(config)
  for field, value, expected in [
      ("cost_scale", 0.0, "must be a number > 0"),
      ("cost_scale", float("inf"), "must be a number > 0"),
      ("batch_size", 0, "must be an integer >= 1"),
      ("group_size", 0, "must be an integer >= 1"),
      ("learning_rate", -1.0, "must be a number > 0"),
  ]:
    bad = quick.get_config()
    bad[field] = value
    with pytest.raises(cli.ConfigError, match=expected):
      cli.validate_config(bad)
  bad = quick.get_config()
  bad.data.split_fractions = (0.5, 0.1, 0.1)
  with pytest.raises(cli.ConfigError, match="split_fractions"):
    cli.validate_config(bad)
  bad = quick.get_config()
  bad.method_overrides.dataset_norm = "per-batch"
  with pytest.raises(cli.ConfigError, match=r"--config.method_overrides.dataset_norm='per-batch'"):
    cli.validate_config(bad)
  with pytest.raises(cli.ConfigError, match="--methods=rlo: unknown method; did you mean 'rloo'"):
    cli.validate_config(quick.get_config(), methods=["recal", "rlo"])


def test_method_overrides_nested_and_json_forms_agree():
  from recal_jax import train  # pylint: disable=import-outside-toplevel
  nested = quick.get_config()
  nested.method_overrides.variance_h = "std"
  assert cli.method_overrides(nested) == {"component_weights": {"cost": 0.2},
                                          "variance_h": "std"}
  method = train.method_from_config(nested)
  assert method.variance_h == "std" and method.weight_vector() == (1.0, 1.0, 0.2)
  old = quick.get_config().to_dict()
  old["method_overrides"] = '{"component_weights": {"cost": 0.3}}'
  assert cli.method_overrides(old) == {"component_weights": {"cost": 0.3}}
  old["method_overrides"] = "{component_weights"
  with pytest.raises(cli.ConfigError, match="--config.method_overrides: invalid JSON"):
    cli.method_overrides(old)


def test_a_crash_is_one_line_with_exit_status_1_and_traceback_only_when_verbose(capsys):
  assert cli.report(RuntimeError("boom\nsecond line"), user_error=False) == 1
  err = capsys.readouterr().err
  assert err.strip() == ("crash: RuntimeError: boom | second line (rerun with --verbosity=1 "
                         "for the traceback)")
  assert cli.report(ValueError("bad"), user_error=True) == 2
  assert capsys.readouterr().err.strip() == "error: bad"


def test_one_train_and_one_route_error_end_to_end(tmp_path):
  """The fast subset of the slow matrices above: parse-time and main-time errors."""
  queries = tmp_path / "q.jsonl"
  queries.write_text('{"query": "q"}\n')
  (rc_typo, _, err_typo), (rc_route, out_route, err_route) = _run_all([
      ["experiments.train", f"--workdir={tmp_path / 'w'}", f"--config={QUICK}",
       "--config.method_overrides.componet_weights=(1,1,1)"],
      ["experiments.route", f"--workdir={tmp_path / 'none'}", f"--queries={queries}",
       "--checkpoint=bogus"]], REPO)
  assert rc_typo == 2 and "did you mean 'component_weights'?" in _error_line(err_typo)
  assert rc_route == 2 and "--checkpoint=bogus" in _error_line(err_route) and not out_route


def test_misspelt_override_names_the_flag_and_the_close_match():
  path = os.path.join(REPO, QUICK)
  explain = lambda *args: cli._explain_bad_override("config", path, list(args))  # pylint: disable=protected-access
  assert explain("--config.batch_sise=3") == (
      f"--config.batch_sise: the config has no field 'batch_sise'; did you mean 'batch_size'? "
      f"(config file {path})")
  assert "'loss' has no field 'entropy_cof'; did you mean 'entropy_coef'?" in explain(
      "--config.num_train_steps=3", "--config.loss.entropy_cof=0.1")
  assert explain("--config.batch_size=3") is None


def test_route_check_flags_in_process():
  from experiments import route  # pylint: disable=import-outside-toplevel
  assert route.check_flags("best", None, None, 8) == "best"
  assert route.check_flags("120", 0.001, None, 8) == 120
  for args, expected in [(("bogus", None, None, 8), "--checkpoint=bogus"),
                         (("-3", None, None, 8), "--checkpoint=-3"),
                         (("best", -1.0, None, 8), "--budget=-1.0"),
                         (("best", None, float("inf"), 8), "--cost_weight=inf"),
                         (("best", 1.0, 1.0, 8), "not both"),
                         (("best", None, None, 0), "--batch_size=0")]:
    with pytest.raises(cli.ConfigError, match=expected):
      route.check_flags(*args)
