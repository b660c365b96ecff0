"""Query featurizers: texts -> fixed-width float vectors, rebuildable by name.

A featurizer is anything with

  name: str      an identity string that fully determines the mapping, e.g.
                 'hashing-v1:dim=512:ngrams=1,2:chars=:seed=0'. A trained
                 router stores it, and `make_featurizer(name)` rebuilds the
                 same featurizer to embed new queries the same way.
  dim: int       D, the width of the vectors.
  __call__(texts: Sequence[str]) -> np.ndarray  [Q, D] float32.

Featurizers here:

* `HashingFeaturizer`: no model, no files. Lower-cased word n-grams (and
  optionally character n-grams within words), each hashed with a stable,
  seeded blake2b hash to a bucket and a sign (the signed hashing trick),
  sublinear term frequency `1 + log(tf)`, L2-normalised rows.
* `MiniLMFeaturizer` (in `recal_jax.data.minilm`, imported only when asked
  for): sentence embeddings, identity 'minilm-l6-v2...'.
* 'synthetic-latent' is not a featurizer: those features are drawn together
  with the synthetic table (`make_synthetic`) and cannot be computed from text.

`CachedFeaturizer(inner, cache_dir)` wraps any featurizer with an on-disk
cache keyed by sha256(name + text); `featurize(table, featurizer)` puts
features into a `RoutingTable`.
"""

from __future__ import annotations

import hashlib
import os
import re
import sqlite3
import warnings
from typing import Protocol, Sequence, runtime_checkable

import numpy as np

from recal_jax.data import table as table_lib

_HASHING_PREFIX = "hashing-v1"
_TOKEN_PATTERN = re.compile(r"\w+", re.UNICODE)


@runtime_checkable
class Featurizer(Protocol):
  """Maps texts to `[Q, dim]` float32 features; `name` identifies it fully."""

  name: str
  dim: int

  def __call__(self, texts: Sequence[str]) -> np.ndarray:
    ...


# ------------------------------------------------------------------ hashing
class HashingFeaturizer:
  """Signed feature hashing of word (and char) n-grams; no model, stable.

  For a text t with n-gram counts tf[g]:

    x[b] = sum over n-grams g with bucket(g) = b of sign(g) * (1 + log tf[g])
    features = x / ||x||_2          (an empty text gives the zero vector)

  where `bucket(g) = H(g) mod dim` and `sign(g) = +1 or -1` from another bit
  of `H(g)`, and H is blake2b keyed by `seed` (Python's `hash()` is salted
  per process, so it cannot be used). Tokens are `\\w+` runs of the
  lower-cased text; word n-grams join tokens with a space, char n-grams are
  taken within `<token>` padded words (fastText style) and prefixed with `#`
  so they never collide with words by construction.

  The identity `name` lists every parameter, e.g.
  `'hashing-v1:dim=512:ngrams=1,2:chars=:seed=0'` (`chars=` empty: no char
  n-grams); `make_featurizer(name)` rebuilds it.
  """

  def __init__(self, dim: int = 512, ngrams: Sequence[int] = (1, 2),
               chars: Sequence[int] = (), seed: int = 0):
    ngrams, chars = tuple(int(n) for n in ngrams), tuple(int(n) for n in chars)
    if dim < 1:
      raise ValueError(f"dim must be >= 1, got {dim}")
    if not ngrams and not chars:
      raise ValueError("at least one of ngrams / chars must be non-empty")
    if any(n < 1 for n in ngrams + chars):
      raise ValueError(f"n-gram sizes must be >= 1, got ngrams={ngrams}, chars={chars}")
    if not 0 <= seed < 2**63:
      raise ValueError(f"seed must be in [0, 2**63), got {seed}")
    self.dim = int(dim)
    self.ngrams = tuple(sorted(set(ngrams)))
    self.chars = tuple(sorted(set(chars)))
    self.seed = int(seed)
    self.name = (f"{_HASHING_PREFIX}:dim={self.dim}:ngrams={_join(self.ngrams)}"
                 f":chars={_join(self.chars)}:seed={self.seed}")
    self._hash_key = self.seed.to_bytes(8, "little")
    # n-gram -> (bucket, sign); n-grams repeat a lot across texts, so the
    # memo makes hashing cost one blake2b per distinct n-gram.
    self._memo: dict[str, tuple[int, float]] = {}

  def __repr__(self) -> str:
    return f"HashingFeaturizer({self.name!r})"

  def _grams(self, text: str) -> list[str]:
    tokens = _TOKEN_PATTERN.findall(text.lower())
    grams = []
    for n in self.ngrams:
      if n == 1:
        grams.extend(tokens)
      else:
        grams.extend(" ".join(tokens[i:i + n]) for i in range(len(tokens) - n + 1))
    for n in self.chars:
      for token in tokens:
        padded = f"<{token}>"
        grams.extend("#" + padded[i:i + n] for i in range(len(padded) - n + 1))
    return grams

  def _bucket_and_sign(self, gram: str) -> tuple[int, float]:
    digest = hashlib.blake2b(gram.encode("utf-8"), digest_size=8,
                             key=self._hash_key).digest()
    value = int.from_bytes(digest, "little")
    # Low bits pick the bucket, the top bit the sign: independent bits.
    return value % self.dim, (1.0 if value >> 63 else -1.0)

  def __call__(self, texts: Sequence[str]) -> np.ndarray:
    """[Q, dim] float32 features of `texts` (see class docstring)."""
    if isinstance(texts, str):
      raise TypeError("texts must be a sequence of strings, not one string")
    texts = list(texts)
    out = np.zeros((len(texts), self.dim), np.float32)
    if len(self._memo) > 2_000_000:  # bound memory on endless streams
      self._memo.clear()
    memo = self._memo
    # Chunks bound the dense [chunk, dim] float64 scratch array.
    chunk = max(1, 2**22 // self.dim)
    for start in range(0, len(texts), chunk):
      part = texts[start:start + chunk]
      row_ids, gram_ids_flat = [], []  # one entry per n-gram occurrence
      buckets, signs = [], []  # per distinct n-gram of this chunk
      gram_ids: dict[str, int] = {}
      for row, text in enumerate(part):
        if not isinstance(text, str):
          raise TypeError(f"texts[{start + row}] is {type(text).__name__}, not str")
        grams = self._grams(text)
        for gram in grams:
          gid = gram_ids.get(gram)
          if gid is None:
            gid = gram_ids[gram] = len(gram_ids)
            hashed = memo.get(gram)
            if hashed is None:
              hashed = memo[gram] = self._bucket_and_sign(gram)
            buckets.append(hashed[0])
            signs.append(hashed[1])
          gram_ids_flat.append(gid)
        row_ids.extend([row] * len(grams))
      if not row_ids:
        continue
      num_grams = len(gram_ids)
      # Term frequency of each (row, n-gram) pair, then the signed scatter.
      pair_keys = np.asarray(row_ids, np.int64) * num_grams + np.asarray(gram_ids_flat, np.int64)
      keys, tf = np.unique(pair_keys, return_counts=True)
      row_of, gram_of = np.divmod(keys, num_grams)
      weight = np.asarray(signs, np.float64)[gram_of] * (1.0 + np.log(tf))
      bucket_of = np.asarray(buckets, np.int64)[gram_of]
      dense = np.bincount(row_of * self.dim + bucket_of, weights=weight,
                          minlength=len(part) * self.dim).reshape(len(part), self.dim)
      norm = np.linalg.norm(dense, axis=1, keepdims=True)
      out[start:start + len(part)] = dense / np.where(norm > 0, norm, 1.0)
    return out


def _join(sizes: Sequence[int]) -> str:
  return ",".join(str(n) for n in sizes)


def _parse_sizes(value: str) -> tuple[int, ...]:
  return tuple(int(v) for v in value.split(",") if v.strip())


# ------------------------------------------------------------- rebuilding
def make_featurizer(identity_or_name: str, **kwargs) -> Featurizer:
  """Builds a featurizer from a short name or from a full identity string.

  Args:
    identity_or_name: `'hashing'` (defaults), a hashing identity such as
      `'hashing-v1:dim=256:ngrams=1,2:chars=3:seed=0'` (missing keys take
      their defaults), or a name starting with `'minilm'` (lazily imports
      `recal_jax.data.minilm`). `'synthetic-latent'` raises: those features
      only come with the synthetic table.
    **kwargs: `dataset_names=` for a `'...+dataset_id'` identity
      (`feature_wrappers`); constructor arguments otherwise: for hashing they override the values in
      the identity string (`dim`, `ngrams`, `chars`, `seed`), for MiniLM they
      go to `MiniLMFeaturizer(cache_dir=..., batch_size=...)`.

  Returns:
    The featurizer; its `name` equals `identity_or_name` whenever that was a
    complete identity, so `make_featurizer(f.name).name == f.name`.

  Raises:
    ValueError: unknown name, malformed identity, or 'synthetic-latent'.
  """
  name = identity_or_name.strip()
  dataset_names = kwargs.pop("dataset_names", None)  # for '...+dataset_id'
  from recal_jax.data import feature_wrappers  # pylint: disable=import-outside-toplevel
  if (name.endswith(feature_wrappers.DATASET_ID_SUFFIX)
      or name.startswith(feature_wrappers.QUESTION_PREFIX)):
    return feature_wrappers.build(name, dataset_names=dataset_names, **kwargs)
  if name == "synthetic-latent":
    raise ValueError(
        "featurizer 'synthetic-latent' cannot be rebuilt: those features are drawn "
        "together with the synthetic table (make_synthetic / load_table('synthetic')) "
        "and cannot be computed from query text. Train with a text featurizer "
        "(e.g. featurizer='hashing') to route new queries.")
  if name == "hashing" or name.startswith(_HASHING_PREFIX):
    params = _parse_hashing_identity(name)
    params.update(kwargs)
    return HashingFeaturizer(**params)
  if name.startswith("minilm"):
    from recal_jax.data import minilm  # pylint: disable=import-outside-toplevel
    # The identity 'minilm-l6-v2:maxlen=<n>' carries the one setting that
    # changes the vectors; pass it back to the constructor.
    for field in name.split(":")[1:]:
      key, _, value = field.partition("=")
      if key == "maxlen" and "max_length" not in kwargs:
        try:
          kwargs["max_length"] = int(value)
        except ValueError:
          raise ValueError(f"featurizer identity {name!r}: bad maxlen {value!r}") from None
    featurizer = minilm.MiniLMFeaturizer(**kwargs)
    if name not in ("minilm", "minilm-l6-v2") and featurizer.name != name:
      raise ValueError(
          f"featurizer identity {name!r} does not match what this installation "
          f"builds ({featurizer.name!r}); features would differ")
    return featurizer
  raise ValueError(
      f"unknown featurizer {identity_or_name!r}; expected 'hashing', "
      f"'{_HASHING_PREFIX}:...', 'minilm...'")


def _parse_hashing_identity(name: str) -> dict:
  if name == "hashing":
    return {}
  head, *fields = name.split(":")
  if head != _HASHING_PREFIX:
    raise ValueError(f"featurizer identity {name!r} must start with {_HASHING_PREFIX!r}")
  params = {}
  for field in fields:
    key, sep, value = field.partition("=")
    if not sep:
      raise ValueError(f"featurizer identity {name!r}: field {field!r} is not key=value")
    try:
      if key in ("dim", "seed"):
        params[key] = int(value)
      elif key in ("ngrams", "chars"):
        params[key] = _parse_sizes(value)
      else:
        raise ValueError(f"unknown key {key!r}")
    except ValueError as e:
      raise ValueError(f"featurizer identity {name!r}: field {field!r}: {e}") from None
  return params


def featurize(table: table_lib.RoutingTable,
              featurizer: Featurizer | str) -> table_lib.RoutingTable:
  """`table` with `features = featurizer(table.texts)` and its identity recorded."""
  from recal_jax.data import feature_wrappers  # pylint: disable=import-outside-toplevel
  if isinstance(featurizer, str):
    featurizer = make_featurizer(featurizer, dataset_names=table.dataset_names)
  if getattr(featurizer, "needs_datasets", False):
    features = featurizer(list(table.texts),
                          datasets=[table.dataset_names[d] for d in table.dataset_ids])
  else:
    features = featurizer(list(table.texts))
  same = feature_wrappers.duplicate_feature_rows(features, table.texts)
  if same:
    warnings.warn(
        f"{table.name}: {same} of {table.num_queries} queries share their features with a "
        f"query of another text (featurizer {featurizer.name}): a prompt prefix longer than "
        "the featurizer's maximum length? Keep only the question with "
        "config.data.question_pattern (WORKSPACE.md, 'Your own logs: JSONL')", stacklevel=2)
  return table.with_features(features, featurizer.name)


# ------------------------------------------------------------------ caching
class CachedFeaturizer:
  """Wraps a featurizer with an on-disk cache of per-text vectors.

  Store: one SQLite file per featurizer identity in `cache_dir`, rows
  `(key = sha256(name + '\\n' + text), vector float32 bytes, checksum)`.
  SQLite gives atomic writes and safe concurrent readers / writers from
  several processes. A row whose length or checksum is wrong, or whose values
  are not finite, is recomputed and overwritten, never trusted; a database
  file that SQLite cannot read at all is moved aside to `*.corrupt` and
  rebuilt.

  `name` and `dim` are those of `inner`: caching does not change features.
  """

  def __init__(self, inner: Featurizer, cache_dir: str | os.PathLike):
    self.inner = inner
    self.name = inner.name
    self.dim = int(inner.dim)
    self.cache_dir = os.fspath(cache_dir)
    tag = re.sub(r"[^A-Za-z0-9._-]+", "_", self.name)[:60]
    digest = hashlib.sha256(self.name.encode()).hexdigest()[:12]
    self.path = os.path.join(self.cache_dir, f"{tag}-{digest}.sqlite")
    self.hits = 0  # texts served from the cache over this object's life
    self.misses = 0

  def __repr__(self) -> str:
    return f"CachedFeaturizer({self.inner!r}, {self.cache_dir!r})"

  def key(self, text: str) -> str:
    return hashlib.sha256((self.name + "\n" + text).encode("utf-8")).hexdigest()

  def _connect(self) -> sqlite3.Connection:
    os.makedirs(self.cache_dir, exist_ok=True)
    connection = sqlite3.connect(self.path, timeout=60)
    connection.execute("CREATE TABLE IF NOT EXISTS vectors "
                       "(key TEXT PRIMARY KEY, vector BLOB NOT NULL, checksum TEXT NOT NULL)")
    return connection

  def _open(self) -> sqlite3.Connection:
    try:
      connection = self._connect()
      connection.execute("SELECT count(*) FROM vectors LIMIT 1").fetchone()
      return connection
    except sqlite3.DatabaseError:
      # Not a database (truncated, overwritten): keep it for inspection,
      # start a fresh one.
      os.replace(self.path, self.path + ".corrupt")
      return self._connect()

  def _decode(self, blob: bytes, checksum: str) -> np.ndarray | None:
    if not isinstance(blob, bytes) or len(blob) != 4 * self.dim:
      return None
    if hashlib.blake2b(blob, digest_size=16).hexdigest() != checksum:
      return None
    vector = np.frombuffer(blob, np.float32)
    return vector if np.isfinite(vector).all() else None

  def __call__(self, texts: Sequence[str]) -> np.ndarray:
    """[Q, dim] float32: cached rows where valid, `inner` for the rest."""
    if isinstance(texts, str):
      raise TypeError("texts must be a sequence of strings, not one string")
    texts = list(texts)
    keys = [self.key(t) for t in texts]
    out = np.zeros((len(texts), self.dim), np.float32)
    found = np.zeros(len(texts), bool)
    connection = self._open()
    try:
      unique_keys = list(dict.fromkeys(keys))
      stored = {}
      for start in range(0, len(unique_keys), 500):  # SQLite bound-variable limit
        batch = unique_keys[start:start + 500]
        rows = connection.execute(
            f"SELECT key, vector, checksum FROM vectors WHERE key IN "
            f"({','.join('?' * len(batch))})", batch).fetchall()
        for key, blob, checksum in rows:
          vector = self._decode(blob, checksum)
          if vector is not None:
            stored[key] = vector
      for i, key in enumerate(keys):
        if key in stored:
          out[i] = stored[key]
          found[i] = True
      missing = np.flatnonzero(~found)
      self.hits += len(texts) - len(missing)
      self.misses += len(missing)
      if len(missing):
        # Compute each distinct missing text once.
        first = {}
        for i in missing:
          first.setdefault(keys[i], i)
        order = list(first.values())
        computed = np.asarray(self.inner([texts[i] for i in order]), np.float32)
        if computed.shape != (len(order), self.dim):
          raise ValueError(f"{self.inner!r} returned shape {computed.shape}, "
                           f"expected {(len(order), self.dim)}")
        by_key = dict(zip((keys[i] for i in order), computed))
        for i in missing:
          out[i] = by_key[keys[i]]
        with connection:
          connection.executemany(
              "INSERT OR REPLACE INTO vectors (key, vector, checksum) VALUES (?, ?, ?)",
              [(key, vector.tobytes(), hashlib.blake2b(vector.tobytes(), digest_size=16)
                .hexdigest()) for key, vector in by_key.items()])
    finally:
      connection.close()
    return out
