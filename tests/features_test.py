"""Tests for recal_jax.data.features: hashing, identities, caching."""

import hashlib
import os
import sqlite3
import subprocess
import sys

import numpy as np
import pytest

from recal_jax.data import features
from recal_jax.data import synthetic

SENTENCE = "The quick brown fox jumps over the lazy dog"
# HashingFeaturizer(dim=16)([SENTENCE]), fixed once: the hash must never
# change across processes, machines or versions, or stored routers break.
EXPECTED_NONZERO = [0, 2, 3, 7, 8, 9, 10, 12, 15]
EXPECTED_VALUES = [-0.454682, 0.0, -0.268542, -0.268542, 0.0, 0.0, 0.0, 0.268542,
                   0.268542, -0.268542, 0.537085, 0.0, 0.268542, 0.0, 0.0, 0.268542]


class CountingFeaturizer:
  """Wraps a featurizer and records which texts it was asked for."""

  def __init__(self, inner):
    self.inner, self.name, self.dim = inner, inner.name, inner.dim
    self.calls = []

  def __call__(self, texts):
    self.calls.append(list(texts))
    return self.inner(texts)


def test_protocol():
  assert isinstance(features.HashingFeaturizer(), features.Featurizer)
  assert isinstance(features.CachedFeaturizer(features.HashingFeaturizer(), "/tmp/x"),
                    features.Featurizer)


def test_fixed_expected_values():
  featurizer = features.HashingFeaturizer(dim=16)
  assert featurizer.name == "hashing-v1:dim=16:ngrams=1,2:chars=:seed=0"
  x = featurizer([SENTENCE])
  assert x.shape == (1, 16) and x.dtype == np.float32
  assert np.flatnonzero(x[0]).tolist() == EXPECTED_NONZERO
  np.testing.assert_allclose(x[0], EXPECTED_VALUES, atol=1e-6)


def test_same_values_in_another_process():
  code = ("import numpy as np; from recal_jax.data.features import HashingFeaturizer; "
          f"print(HashingFeaturizer(dim=16, chars=(3,))([{SENTENCE!r}]).tobytes().hex())")
  env = dict(os.environ, PYTHONHASHSEED="12345")
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.getcwd(), env.get("PYTHONPATH")]))
  out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                       text=True, check=True).stdout.strip()
  here = features.HashingFeaturizer(dim=16, chars=(3,))([SENTENCE])
  assert np.array_equal(np.frombuffer(bytes.fromhex(out), np.float32).reshape(1, 16), here)


def test_l2_normalised_and_empty_rows():
  featurizer = features.HashingFeaturizer(dim=64, chars=(3,))
  x = featurizer([SENTENCE, "a", "", "  ,;!  ", "x" * 500])
  np.testing.assert_allclose(np.linalg.norm(x[[0, 1, 4]], axis=1), 1.0, rtol=1e-6)
  assert not x[2].any() and not x[3].any()  # no token: the zero vector
  assert featurizer([]).shape == (0, 64)


def test_case_insensitive_order_sensitive_and_seeded():
  featurizer = features.HashingFeaturizer(dim=256)
  a, b, c = featurizer(["Routing LLMs", "routing llms", "llms routing"])
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)  # bigrams see the word order
  unigram = features.HashingFeaturizer(dim=256, ngrams=(1,))
  a, c = unigram(["Routing LLMs", "llms routing"])
  np.testing.assert_array_equal(a, c)
  other_seed = features.HashingFeaturizer(dim=256, seed=1)
  assert not np.allclose(featurizer([SENTENCE]), other_seed([SENTENCE]))


def test_sublinear_term_frequency():
  featurizer = features.HashingFeaturizer(dim=1 << 16, ngrams=(1,))
  x = featurizer(["cat cat cat dog"])[0]
  cat, dog = (featurizer._bucket_and_sign(w) for w in ("cat", "dog"))
  assert cat[0] != dog[0]
  ratio = (x[cat[0]] * cat[1]) / (x[dog[0]] * dog[1])
  assert ratio == pytest.approx(1 + np.log(3), rel=1e-5)


def test_non_string_inputs_rejected():
  featurizer = features.HashingFeaturizer()
  with pytest.raises(TypeError, match="not one string"):
    featurizer("one string")
  with pytest.raises(TypeError, match=r"texts\[1\]"):
    featurizer(["ok", 3])


def test_batch_independent():
  featurizer = features.HashingFeaturizer(dim=32)
  texts = list(synthetic.make_synthetic(300).texts)
  whole = featurizer(texts)
  pieces = np.concatenate([features.HashingFeaturizer(dim=32)(texts[i:i + 7])
                           for i in range(0, 300, 7)])
  np.testing.assert_array_equal(whole, pieces)


@pytest.mark.parametrize("kwargs", [{}, {"dim": 64}, {"dim": 100, "ngrams": (1, 2, 3)},
                                    {"chars": (3, 4), "seed": 7}, {"ngrams": (), "chars": (3,)}])
def test_identity_round_trip(kwargs):
  featurizer = features.HashingFeaturizer(**kwargs)
  rebuilt = features.make_featurizer(featurizer.name)
  assert rebuilt.name == featurizer.name and rebuilt.dim == featurizer.dim
  np.testing.assert_array_equal(rebuilt([SENTENCE, "x y"]), featurizer([SENTENCE, "x y"]))


def test_make_featurizer_names_and_overrides():
  assert features.make_featurizer("hashing").name == features.HashingFeaturizer().name
  partial = features.make_featurizer("hashing-v1:dim=64")
  assert partial.name == "hashing-v1:dim=64:ngrams=1,2:chars=:seed=0"
  assert features.make_featurizer("hashing", dim=32, chars=(3,)).dim == 32
  with pytest.raises(ValueError, match="drawn together with the synthetic table"):
    features.make_featurizer("synthetic-latent")
  with pytest.raises(ValueError, match="unknown featurizer"):
    features.make_featurizer("bow")
  with pytest.raises(ValueError, match="unknown key 'size'"):
    features.make_featurizer("hashing-v1:size=3")
  with pytest.raises(ValueError, match="not key=value"):
    features.make_featurizer("hashing-v1:dim")
  with pytest.raises(ValueError, match="dim must be"):
    features.make_featurizer("hashing-v1:dim=0")


def test_featurize_table():
  table = synthetic.make_synthetic(400)
  featurized = features.featurize(table, "hashing-v1:dim=128")
  assert featurized.features.shape == (400, 128)
  assert featurized.featurizer == "hashing-v1:dim=128:ngrams=1,2:chars=:seed=0"
  np.testing.assert_array_equal(featurized.score, table.score)
  # The texts name their dataset: nearest centroid separates them.
  x, d = featurized.features, featurized.dataset_ids
  centroids = np.stack([x[d == k].mean(0) for k in range(table.num_datasets)])
  assert ((x @ centroids.T).argmax(1) == d).mean() > 0.95


def test_cache_hits_return_equal_arrays(tmp_path):
  inner = CountingFeaturizer(features.HashingFeaturizer(dim=32))
  cached = features.CachedFeaturizer(inner, tmp_path)
  assert cached.name == inner.name and cached.dim == 32
  texts = ["alpha beta", "gamma", "alpha beta", "delta"]
  first = cached(texts)
  assert inner.calls == [["alpha beta", "gamma", "delta"]]  # duplicates computed once
  np.testing.assert_array_equal(first, inner.inner(texts))
  second = cached(texts)
  np.testing.assert_array_equal(second, first)
  assert len(inner.calls) == 1 and cached.hits == 4 and cached.misses == 4
  third = cached(["delta", "epsilon"])  # only the new text is computed
  assert inner.calls[-1] == ["epsilon"]
  np.testing.assert_array_equal(third[0], first[3])
  # A new object on the same directory reads the same store.
  fresh = features.CachedFeaturizer(features.HashingFeaturizer(dim=32), tmp_path)
  np.testing.assert_array_equal(fresh(texts), first)
  assert fresh.hits == 4
  # Another identity never reads these entries.
  other = features.CachedFeaturizer(features.HashingFeaturizer(dim=32, seed=1), tmp_path)
  other(texts)
  assert other.hits == 0 and other.path != cached.path


def test_corrupted_cache_file_is_recomputed(tmp_path):
  inner = CountingFeaturizer(features.HashingFeaturizer(dim=32))
  cached = features.CachedFeaturizer(inner, tmp_path)
  texts = ["alpha beta", "gamma"]
  expected = cached(texts)
  with open(cached.path, "wb") as f:
    f.write(b"this is not a database" * 100)
  np.testing.assert_array_equal(cached(texts), expected)
  assert len(inner.calls) == 2
  assert os.path.exists(cached.path + ".corrupt")
  np.testing.assert_array_equal(cached(texts), expected)  # the rebuilt store works
  assert len(inner.calls) == 2


def test_corrupted_cache_entries_are_recomputed(tmp_path):
  inner = CountingFeaturizer(features.HashingFeaturizer(dim=32))
  cached = features.CachedFeaturizer(inner, tmp_path)
  texts = ["alpha beta", "gamma", "delta"]
  expected = cached(texts)
  connection = sqlite3.connect(cached.path)
  with connection:
    # Same length, wrong bytes (checksum mismatch); too short; NaN with a
    # matching checksum (not finite).
    connection.execute("UPDATE vectors SET vector = ? WHERE key = ?",
                       (np.ones(32, np.float32).tobytes(), cached.key("alpha beta")))
    connection.execute("UPDATE vectors SET vector = ? WHERE key = ?",
                       (b"\x00\x01", cached.key("gamma")))
    nan_bytes = np.full(32, np.nan, np.float32).tobytes()
    connection.execute("UPDATE vectors SET vector = ?, checksum = ? WHERE key = ?",
                       (nan_bytes, hashlib.blake2b(nan_bytes, digest_size=16).hexdigest(),
                        cached.key("delta")))
  connection.close()
  np.testing.assert_array_equal(cached(texts), expected)
  assert inner.calls[-1] == texts
  np.testing.assert_array_equal(cached(texts), expected)
  assert len(inner.calls) == 2  # repaired entries are trusted again
