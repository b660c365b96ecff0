"""The trainer's error types (the app boundary turns them into one line, exit 2)."""


class NonFiniteError(FloatingPointError):
  """A training statistic became NaN or infinite; names the step and statistic."""


class ConfigError(ValueError):
  """A config value the trainer cannot run with; names the field and the value."""


class WorkdirConflictError(ValueError):
  """A work dir holds a run of another table or config; names what differs."""
