"""The embedded synthetic routing table: a small, fixed "world" of LLM routing.

`make_synthetic` draws Q queries from seven datasets and logs the outcome of
every arm (model x strategy) on every query, with no files and no network. It
is built to have the properties that make ReCal matter:

* Datasets differ in difficulty *and* in reward spread: `mcq_easy` is right for
  almost every arm (groups with no spread), `mcq_hard` is solved only by the
  expensive model, `open_qa` is noisy (low discrimination, outcomes close to
  coin flips), `code` has a graded score (fraction of 10 unit tests passed),
  `arith` and `logic` reward chain-of-thought, `extract` punishes format errors.
* Five models with per-dataset skills and prices from 0.10 to 15 USD per
  million tokens; two strategies (`direct`, `cot`) per model, so A = 10 arms.
  `cot` raises accuracy on reasoning datasets, writes many more completion
  tokens (so costs more) and fails the answer format more often, most of all
  for small models.
* The per-query oracle is well above the best single arm, a cheaper routing
  matches the best single arm, and the cheapest arm is much worse.

Generative model (for query q of dataset d, model m, strategy s):

  difficulty  b[q] ~ N(0, 1),  topic  z[q] ~ N(0, I_T)   (T = 4 latent topics)
  logit[q, m, s] = a[d] * (skill[m, d] + [s = cot] * cot_gain[m, d]
                           - b[q] * difficulty_scale[d]
                           + topic_scale[d] * <affinity[m], z[q]>)
  p_correct = sigmoid(logit)
  format_fail ~ Bernoulli(sigmoid(format_logit[m] + [s = cot] * cot_format[m]
                                  + format_bias[d] + 0.4 * b[q]))
  score = 0 if format failed, else Bernoulli(p_correct)   (code: Binomial(10, p) / 10)
  prompt_tokens ~ LogNormal per dataset (+ a fixed cot instruction),
  completion_tokens ~ LogNormal per dataset and strategy, x model verbosity,
                      x exp(0.25 b[q]) (hard queries make longer answers)
  cost = prompt_tokens * input_price / 1e6 + completion_tokens * output_price / 1e6

Features `[Q, feature_dim]` are a fixed linear map of the latent
`[b, z]` (the routing signal) plus a per-dataset embedding plus Gaussian noise,
so the dataset is recoverable from the features but is not all of the signal.
The map and the embeddings are fixed (they do not depend on `seed`), so tables
drawn with different seeds are samples from the same world. Texts are
synthetic strings like `"arith q00017: tricky add product ratio prime"`: a
difficulty word, then one word per topic from the dataset's own vocabulary,
picked by the topic's value (`_make_texts`), so a text featurizer
(`load_table('synthetic', featurizer='hashing')`) sees the dataset, the
topics and the difficulty, quantised: routers trained on it route new text.
"""

from __future__ import annotations

import numpy as np

from recal_jax.data import table as table_lib

FEATURIZER_NAME = "synthetic-latent"

# Datasets, in dataset-id order.
DATASETS = ("arith", "mcq_easy", "mcq_hard", "code", "open_qa", "logic", "extract")
# Share of queries per dataset (sums to 1).
_DATASET_SHARE = np.array([0.16, 0.15, 0.13, 0.15, 0.15, 0.14, 0.12])
_GRADED_DATASET = "code"  # the one dataset whose score is a pass rate
_NUM_UNIT_TESTS = 10

MODELS = ("nano-1b", "small-8b", "coder-22b", "general-70b", "frontier-xl")
STRATEGIES = ("direct", "cot")
# USD per million tokens.
INPUT_PRICE = np.array([0.10, 0.15, 0.30, 0.90, 3.00])
OUTPUT_PRICE = np.array([0.10, 0.60, 1.20, 0.90, 15.00])

# skill[m, d]: logit of answering an average query of dataset d directly.
#                  arith mcq_e mcq_h  code  o_qa logic extract
_SKILL = np.array([
    [-1.8,  2.2, -3.2, -2.4, -1.6, -2.6,  0.2],  # nano-1b
    [-0.9,  3.4, -2.6, -1.2, -0.9, -1.6,  1.2],  # small-8b
    [-0.5,  3.2, -2.4,  1.3, -1.2, -1.0,  1.6],  # coder-22b
    [ 0.0,  3.8, -1.8,  0.4,  0.0, -0.2,  2.5],  # general-70b
    [ 0.2,  4.0,  0.1,  0.9,  0.2, -0.1,  2.7],  # frontier-xl
])
# cot_gain[m, d]: logit added by chain of thought. Large on reasoning datasets
# (arith, logic), small or none on knowledge / formatting ones (where the
# extra format failures make cot a net loss); bigger models use the extra
# tokens better.
_COT_GAIN = np.array([
    [1.0, 0.0, 0.0, 0.2, 0.0, 0.8, -0.3],
    [1.6, 0.0, 0.2, 0.4, 0.0, 1.4, -0.3],
    [1.8, 0.0, 0.2, 0.6, 0.0, 1.6, -0.2],
    [2.2, 0.0, 0.3, 0.6, 0.1, 2.1, -0.1],
    [2.3, 0.0, 0.3, 0.6, 0.1, 2.2, -0.1],
])
# Per-dataset discrimination a[d] (open_qa is low: outcomes near coin flips),
# spread of difficulty (shared by all arms, so outcomes correlate across arms
# and the oracle is not just luck), weight of the topics.
_DISCRIMINATION = np.array([1.0, 1.0, 1.2, 1.0, 0.6, 1.0, 1.0])
_DIFFICULTY_SCALE = np.array([2.0, 1.4, 1.5, 1.8, 1.2, 2.0, 1.6])
_TOPIC_SCALE = np.array([1.0, 0.6, 1.0, 1.3, 1.0, 1.0, 0.8])
_NUM_TOPICS = 4
# affinity[m]: how each model's skill shifts with the query's latent topic;
# the models are specialists in different directions, so the best arm
# changes from query to query even within a dataset.
_AFFINITY = np.array([
    [0.6, -0.4, 0.0, 0.2],
    [-0.5, 0.7, 0.3, -0.3],
    [0.3, 0.1, 0.9, -0.6],
    [-0.2, -0.6, -0.3, 0.8],
    [0.0, 0.3, -0.5, 0.1],
])
# Format failures: smaller models and cot fail more; `extract` asks for a
# strict output schema, `mcq_*` for a single letter.
_FORMAT_LOGIT = np.array([-3.2, -3.8, -4.2, -4.8, -5.5])
_COT_FORMAT = np.array([1.3, 1.0, 0.8, 0.6, 0.5])
_FORMAT_BIAS = np.array([0.0, -0.3, -0.3, 0.3, 0.0, 0.0, 1.2])
_FORMAT_DIFFICULTY = 0.4
# Tokens: median prompt tokens per dataset, median completion tokens per
# dataset and strategy, a verbosity factor per model.
_PROMPT_TOKENS = np.array([90, 180, 260, 420, 60, 240, 650])
_COT_PROMPT_EXTRA = 35  # "Think step by step, then answer with ..."
_COMPLETION_TOKENS = np.array([
    [8, 3, 3, 180, 25, 10, 70],  # direct
    [320, 140, 380, 520, 220, 560, 260],  # cot
])
_VERBOSITY = np.array([1.35, 1.15, 1.0, 1.0, 0.9])
_TOKEN_SIGMA = 0.35  # log-normal spread of token counts

# Per-dataset vocabularies for the texts: one group of 4 words per latent
# topic, ordered from the most negative to the most positive topic value.
_VOCAB = {
    "arith": ("sum carry digits add", "product multiply times factor",
              "fraction ratio percent divide", "remainder modulo prime integer"),
    "mcq_easy": ("capital country city river", "color animal fruit shape",
                 "planet moon sun star", "month week day season"),
    "mcq_hard": ("enzyme protein genome receptor", "tort statute precedent clause",
                 "isotope lattice quantum boson", "treaty dynasty empire revolt"),
    "code": ("function return loop index", "string parse regex split",
             "graph node edge traverse", "matrix array vector slice"),
    "open_qa": ("who invented founded wrote", "when year date century",
                "where located region border", "why cause reason effect"),
    "logic": ("knight knave liar truth", "puzzle grid seat order",
              "implies premise conclusion valid", "syllogism all some none"),
    "extract": ("invoice total vendor amount", "email sender subject date",
                "table column header cell", "address street postcode city"),
}
# Text words: a difficulty level, then one word per topic by the bucket of z.
_LEVELS = ("trivial", "simple", "standard", "tricky", "brutal")
_TOPIC_BUCKETS = (-0.7, 0.0, 0.7)
_TEXT_NOISE = 0.3
_FEATURE_NOISE = 0.6
_DATASET_EMBEDDING_SCALE = 0.8
_WORLD_SEED = 20260612  # fixes the feature map; `seed` only draws queries


def _sigmoid(x: np.ndarray) -> np.ndarray:
  return 1.0 / (1.0 + np.exp(-x))


def _feature_map(feature_dim: int) -> tuple[np.ndarray, np.ndarray]:
  """The fixed latent->feature projection [1 + T, F] and dataset embeddings [D, F]."""
  world = np.random.default_rng([_WORLD_SEED, feature_dim])
  projection = world.normal(size=(1 + _NUM_TOPICS, feature_dim)) / np.sqrt(1 + _NUM_TOPICS)
  # Per-coordinate scale comparable to the latent part (unit variance), so a
  # linear probe recovers the dataset but the dataset is not all there is.
  embeddings = _DATASET_EMBEDDING_SCALE * world.normal(size=(len(DATASETS), feature_dim))
  return projection, embeddings


def make_synthetic(num_queries: int = 4000, *, seed: int = 0, feature_dim: int = 32,
                   split_fractions: tuple[float, float, float] = (0.7, 0.1, 0.2)
                   ) -> table_lib.RoutingTable:
  """Draws the synthetic routing table (see module docstring for the model).

  Args:
    num_queries: Q, the number of queries (split over the seven datasets by
      fixed shares; every dataset gets at least one query when Q >= 7).
    seed: everything drawn (queries, outcomes, tokens, splits) is a function
      of `seed`; the world (skills, prices, feature map) is fixed.
    feature_dim: F, the width of the latent features; must be >= 1.
    split_fractions: (train, validation, test) fractions for
      `stratified_split`.

  Returns:
    A validated `RoutingTable` with Q queries, A = 10 arms (5 models x
    `direct`/`cot`), features `[Q, F]` with featurizer `'synthetic-latent'`.
  """
  if num_queries < 1:
    raise ValueError(f"num_queries must be >= 1, got {num_queries}")
  if feature_dim < 1:
    raise ValueError(f"feature_dim must be >= 1, got {feature_dim}")
  rng = np.random.default_rng(seed)
  num_datasets, num_models = len(DATASETS), len(MODELS)

  # Queries per dataset: largest-remainder rounding of the fixed shares.
  raw = _DATASET_SHARE * num_queries
  counts = np.floor(raw).astype(int)
  counts[np.argsort(-(raw - counts), kind="stable")[:num_queries - counts.sum()]] += 1
  dataset_ids = np.repeat(np.arange(num_datasets), counts).astype(np.int32)
  index_in_dataset = np.arange(num_queries) - np.repeat(np.cumsum(counts) - counts, counts)

  difficulty = rng.normal(size=num_queries)  # [Q]
  topics = rng.normal(size=(num_queries, _NUM_TOPICS))  # [Q, T]

  # Correctness: arms are ordered model-major, strategy-minor.
  d = dataset_ids
  is_cot = np.array([0.0, 1.0])  # [S]
  topic_effect = _TOPIC_SCALE[d, None] * (topics @ _AFFINITY.T)  # [Q, M]
  logit_direct = (_SKILL[:, d].T - (difficulty * _DIFFICULTY_SCALE[d])[:, None]
                  + topic_effect)  # [Q, M]
  logit = (logit_direct[:, :, None]
           + _COT_GAIN[:, d].T[:, :, None] * is_cot)  # [Q, M, S]
  p_correct = _sigmoid(_DISCRIMINATION[d, None, None] * logit)

  format_logit = (_FORMAT_LOGIT[None, :, None] + _COT_FORMAT[None, :, None] * is_cot
                  + _FORMAT_BIAS[d, None, None]
                  + _FORMAT_DIFFICULTY * difficulty[:, None, None])
  format_ok = rng.random(p_correct.shape) >= _sigmoid(format_logit)

  graded = dataset_ids == DATASETS.index(_GRADED_DATASET)
  uniform = rng.random(p_correct.shape)
  passed = rng.binomial(_NUM_UNIT_TESTS, p_correct) / _NUM_UNIT_TESTS
  score = np.where(graded[:, None, None], passed, (uniform < p_correct).astype(float))
  score = np.where(format_ok, score, 0.0)  # an unparsed answer counts as wrong

  # Tokens and cost. A prompt is the same for every model (cot adds its
  # instruction); completions scale with strategy, model and difficulty.
  prompt_tokens = np.round(_PROMPT_TOKENS[d] * np.exp(
      _TOKEN_SIGMA * rng.normal(size=num_queries)))  # [Q]
  prompt_tokens = prompt_tokens[:, None, None] + _COT_PROMPT_EXTRA * is_cot  # [Q, 1, S]
  completion_median = (_COMPLETION_TOKENS[:, d].T[:, None, :]
                       * _VERBOSITY[None, :, None]
                       * np.exp(0.25 * difficulty)[:, None, None])  # [Q, M, S]
  completion_tokens = np.maximum(1.0, np.round(completion_median * np.exp(
      _TOKEN_SIGMA * rng.normal(size=completion_median.shape))))
  cost = (prompt_tokens * INPUT_PRICE[None, :, None]
          + completion_tokens * OUTPUT_PRICE[None, :, None]) / 1e6

  # Features: the routing signal (difficulty, topics) through a fixed map,
  # plus the dataset embedding, plus noise.
  projection, embeddings = _feature_map(feature_dim)
  latent = np.concatenate([difficulty[:, None], topics], axis=1)  # [Q, 1 + T]
  features = (latent @ projection + embeddings[d]
              + _FEATURE_NOISE * rng.normal(size=(num_queries, feature_dim)))

  texts = _make_texts(rng, dataset_ids, index_in_dataset, topics, difficulty)
  query_ids = np.array([f"synthetic-{DATASETS[i]}-{j:05d}"
                        for i, j in zip(dataset_ids, index_in_dataset)], dtype=object)
  split = table_lib.stratified_split(texts, dataset_ids, split_fractions, seed=seed)

  num_arms = num_models * len(STRATEGIES)
  flat = lambda x: np.asarray(x, np.float32).reshape(num_queries, num_arms)
  table = table_lib.RoutingTable(
      name="synthetic",
      query_ids=query_ids,
      texts=texts,
      features=features.astype(np.float32),
      dataset_ids=dataset_ids,
      dataset_names=DATASETS,
      arm_models=tuple(m for m in MODELS for _ in STRATEGIES),
      arm_strategies=tuple(s for _ in MODELS for s in STRATEGIES),
      input_price=np.repeat(INPUT_PRICE, len(STRATEGIES)).astype(np.float32),
      output_price=np.repeat(OUTPUT_PRICE, len(STRATEGIES)).astype(np.float32),
      score=flat(score),
      format_ok=flat(format_ok),
      cost=flat(cost),
      tokens=flat(completion_tokens),
      outcome_mask=np.ones((num_queries, num_arms), bool),
      split=split,
      featurizer=FEATURIZER_NAME,
      description=(f"synthetic routing world: {num_queries} queries, seed={seed}, "
                   f"feature_dim={feature_dim}, split_fractions={tuple(split_fractions)}"),
      cost_is_estimated=False,
  )
  return table.validate()


def _make_texts(rng: np.random.Generator, dataset_ids: np.ndarray,
                index_in_dataset: np.ndarray, topics: np.ndarray,
                difficulty: np.ndarray) -> np.ndarray:
  """[Q] unique strings `"<dataset> q<index>: <level> <w_1> <w_2> <w_3> <w_4>"`.

  The texts carry the routing signal, so a text featurizer (hashing, MiniLM)
  sees what the latent features hold, only quantised and noisy:

    level = the `_LEVELS` word of clip(round(b[q] + 0.3 e), -2, 2)
    w_t   = _VOCAB[dataset][t][k],  k = #{c in (-0.7, 0, 0.7): c < z[q, t] + 0.3 e_t}

  (e, e_t ~ N(0, 1)): one word per latent topic t, picked by the quartile-like
  bucket of z[q, t], from that dataset's own vocabulary, so the words say the
  dataset, the topic coordinates (sign and size) and the difficulty. A ridge
  probe of the scores on hashing features of these texts routes the test
  split at ~0.75 (latent features: 0.77; dataset one-hot: 0.73;
  `tests/synthetic_test.py` checks the ordering).
  """
  num_queries = len(dataset_ids)
  vocab = [[group.split() for group in _VOCAB[name]] for name in DATASETS]
  level = np.clip(np.round(difficulty + _TEXT_NOISE * rng.normal(size=num_queries)),
                  -2, 2).astype(int) + 2
  bucket = np.digitize(topics + _TEXT_NOISE * rng.normal(size=topics.shape),
                       _TOPIC_BUCKETS)  # [Q, T] in 0..3
  return np.array([
      f"{DATASETS[d]} q{i:05d}: {_LEVELS[level[q]]} "
      + " ".join(vocab[d][t][bucket[q, t]] for t in range(_NUM_TOPICS))
      for q, (d, i) in enumerate(zip(dataset_ids, index_in_dataset))], dtype=object)
