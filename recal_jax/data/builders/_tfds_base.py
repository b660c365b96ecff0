"""The TFDS side shared by the real-log builders (works without TensorFlow).

Each builder parses its log folder (inside the manual dir) with its pure
parser, stores one example per query (per-arm outcomes as [A] tensors), and
keeps everything else a `RoutingTable` needs (arm models and strategies,
prices, dataset names, description, a fingerprint) in the builder's
`metadata.json`. `table_from_builder` reads the prepared dataset back through
`builder.as_data_source()` (ArrayRecord, random access, no TensorFlow) and
rebuilds the identical `RoutingTable`.

The split seed is a builder config: `seed0` is predefined, other seeds are
made on the fly by `make_builder` and cached in their own directory.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable, ClassVar

from absl import logging
import numpy as np
import tensorflow_datasets as tfds

from recal_jax.data.table import RoutingDataError, RoutingTable, SPLIT_NAMES

DEFAULT_FILE_FORMAT = "array_record"

MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Nothing is downloaded. The manual dir is the read-only `routing_data` folder
of this workspace (default `<repo>/../shared/routing_data`, or the env var
RECAL_ROUTING_DATA), holding `routeprofile/`, `llmrouter/` and `routellm/` as
described in its README.md. Pass it as
`tfds.download.DownloadConfig(manual_dir=...)`, or use
`recal_jax.data.real.load_real_table(name, manual_dir=...)`.
Never copy these files into the repository.
"""


@dataclasses.dataclass
class RoutingLogConfig(tfds.core.BuilderConfig):
  """Builder config: the seed of the stratified train/validation/test split."""
  seed: int = 0


def _config_name(seed: int) -> str:
  return f"seed{int(seed)}"


class RoutingLogBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base class: one example per query, per-arm outcomes as [A] tensors.

  Subclasses set `name`, `SUBDIR` (folder inside the manual dir), `MODELS`
  (arm order), `DATASET_NAMES`, `HOMEPAGE` and `PARSER` (a function
  `(folder, *, seed) -> RoutingTable`).
  """

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [RoutingLogConfig(name=_config_name(0), seed=0,
                                      description="Stratified split with seed 0.")]
  DEFAULT_CONFIG_NAME = _config_name(0)
  MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS

  SUBDIR: ClassVar[str] = ""
  MODELS: ClassVar[tuple[str, ...]] = ()
  DATASET_NAMES: ClassVar[tuple[str, ...]] = ()
  HOMEPAGE: ClassVar[str] = ""
  DESCRIPTION: ClassVar[str] = ""
  PARSER: ClassVar[Callable[..., RoutingTable]]

  def __init__(self, *, file_format=None, **kwargs):
    # ArrayRecord by default: TFRecord (TFDS's default) cannot be read back
    # without TensorFlow, so the plain `tfds.builder(name).download_and_prepare()`
    # then `.as_data_source()` works only with this default.
    super().__init__(file_format=file_format or DEFAULT_FILE_FORMAT, **kwargs)

  def _log_download_bytes(self) -> None:
    # TFDS prints "Downloading and preparing dataset Unknown size ..."; nothing
    # is downloaded here (the logs are read from the manual dir).
    logging.info("Preparing %s from the manual dir into %s", self.name, self.data_dir)

  def _log_download_done(self) -> None:
    logging.info("Prepared %s in %s", self.name, self.data_dir)

  def _info(self) -> tfds.core.DatasetInfo:
    num_arms = len(self.MODELS)
    per_arm = lambda dtype: tfds.features.Tensor(shape=(num_arms,), dtype=dtype)  # noqa: E731
    return tfds.core.DatasetInfo(
        builder=self,
        description=self.DESCRIPTION,
        features=tfds.features.FeaturesDict({
            "index": tfds.features.Scalar(dtype=np.int64, doc="row in the parsed table"),
            "query_id": tfds.features.Text(),
            "text": tfds.features.Text(),
            "dataset": tfds.features.ClassLabel(names=list(self.DATASET_NAMES)),
            "split": tfds.features.ClassLabel(names=list(SPLIT_NAMES)),
            "score": per_arm(np.float32),
            "format_ok": per_arm(np.float32),
            "cost": per_arm(np.float32),
            "tokens": per_arm(np.float32),
            "mask": per_arm(np.bool_),
        }),
        homepage=self.HOMEPAGE,
        metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager):
    folder = os.path.join(os.fspath(dl_manager.manual_dir), self.SUBDIR)
    table = type(self).PARSER(folder, seed=self.builder_config.seed)
    if table.arm_models != tuple(self.MODELS):
      raise RoutingDataError(f"{folder}: arms {table.arm_models} differ from {self.MODELS}")
    if table.dataset_names != tuple(self.DATASET_NAMES):
      raise RoutingDataError(
          f"{folder}: datasets {table.dataset_names} differ from {self.DATASET_NAMES}")
    self.info.metadata.update(table_metadata(table, seed=self.builder_config.seed))
    return {name: self._generate_examples(table, split_id)
            for split_id, name in enumerate(SPLIT_NAMES)
            if (table.split == split_id).any()}

  def _generate_examples(self, table: RoutingTable, split_id: int):
    for i in np.flatnonzero(table.split == split_id):
      yield str(table.query_ids[i]), {
          "index": int(i),
          "query_id": str(table.query_ids[i]),
          "text": str(table.texts[i]),
          "dataset": int(table.dataset_ids[i]),
          "split": int(table.split[i]),
          "score": table.score[i],
          "format_ok": table.format_ok[i],
          "cost": table.cost[i],
          "tokens": table.tokens[i],
          "mask": table.outcome_mask[i],
      }


def table_metadata(table: RoutingTable, *, seed: int) -> dict:
  """The JSON-able non-per-query fields of `table` (kept in metadata.json)."""
  return {
      "name": table.name,
      "description": table.description,
      "cost_is_estimated": bool(table.cost_is_estimated),
      "featurizer": table.featurizer,
      "arm_models": list(table.arm_models),
      "arm_strategies": list(table.arm_strategies),
      "input_price": [float(x) for x in table.input_price],
      "output_price": [float(x) for x in table.output_price],
      "dataset_names": list(table.dataset_names),
      "seed": int(seed),
      "num_queries": table.num_queries,
      "fingerprint": table.fingerprint(),
  }


def make_builder(builder_cls: type[RoutingLogBuilder], *, data_dir: str,
                 seed: int = 0) -> RoutingLogBuilder:
  """A builder for `seed` (predefined config for 0, an ad-hoc one otherwise)."""
  name = _config_name(seed)
  config = name if name in builder_cls.builder_configs else RoutingLogConfig(
      name=name, seed=int(seed), description=f"Stratified split with seed {seed}.")
  return builder_cls(config=config, data_dir=data_dir, file_format="array_record")


def prepare(builder: RoutingLogBuilder, manual_dir: str) -> None:
  """Builds the dataset from `manual_dir` unless it is already cached."""
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(
          manual_dir=os.fspath(manual_dir), try_download_gcs=False),
      file_format="array_record")


def _text(value) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def table_from_builder(builder: RoutingLogBuilder) -> RoutingTable:
  """Reads a prepared builder back (`as_data_source`) into a `RoutingTable`."""
  meta = dict(builder.info.metadata or {})
  if "arm_models" not in meta:
    raise RoutingDataError(f"{builder.data_dir}: metadata.json lacks the table metadata")
  records = []
  for source in builder.as_data_source().values():
    n = len(source)
    if n:
      records.extend(source.__getitems__(list(range(n))))
  records.sort(key=lambda r: int(r["index"]))
  if [int(r["index"]) for r in records] != list(range(len(records))):
    raise RoutingDataError(f"{builder.data_dir}: rows are missing or duplicated")
  q = len(records)
  stack = lambda key, dtype: np.asarray(  # noqa: E731
      [r[key] for r in records], dtype).reshape(q, len(meta["arm_models"]))
  texts = np.empty(q, dtype=object)
  texts[:] = [_text(r["text"]) for r in records]
  table = RoutingTable(
      name=meta["name"],
      query_ids=np.asarray([_text(r["query_id"]) for r in records], dtype=object),
      texts=texts,
      features=np.zeros((q, 0), np.float32),
      dataset_ids=np.asarray([r["dataset"] for r in records], np.int32),
      dataset_names=tuple(meta["dataset_names"]),
      arm_models=tuple(meta["arm_models"]),
      arm_strategies=tuple(meta["arm_strategies"]),
      input_price=np.asarray(meta["input_price"], np.float32),
      output_price=np.asarray(meta["output_price"], np.float32),
      score=stack("score", np.float32),
      format_ok=stack("format_ok", np.float32),
      cost=stack("cost", np.float32),
      tokens=stack("tokens", np.float32),
      outcome_mask=stack("mask", bool),
      split=np.asarray([r["split"] for r in records], np.int8),
      featurizer=meta.get("featurizer", "none"),
      description=meta["description"],
      cost_is_estimated=bool(meta["cost_is_estimated"]),
  ).validate()
  if table.fingerprint() != meta.get("fingerprint"):
    raise RoutingDataError(
        f"{builder.data_dir}: table read back has fingerprint {table.fingerprint()}, "
        f"metadata says {meta.get('fingerprint')} (stale or corrupt cache: delete it)")
  return table
