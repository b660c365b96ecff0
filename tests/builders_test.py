"""The TFDS builders with plain TFDS calls: ArrayRecord by default, no TensorFlow, quiet."""

import os

import pytest

from recal_jax.data.real import default_manual_dir  # noqa: E402

ROUTING_DATA = default_manual_dir()


def test_tests_never_build_into_the_home_cache():
  from recal_jax.data import real  # pylint: disable=import-outside-toplevel
  home_cache = os.path.join(os.path.expanduser("~"), ".cache")
  assert not os.path.abspath(real.default_data_dir()).startswith(home_cache)


@pytest.mark.skipif(not os.path.isdir(ROUTING_DATA), reason="../shared/routing_data not found")
def test_plain_tfds_builder_then_data_source(tmp_path, capsys):
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  import recal_jax.data.builders  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  builder = tfds.builder("routeprofile", data_dir=str(tmp_path))
  assert builder.info.file_format.value == "array_record"
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=ROUTING_DATA))
  source = builder.as_data_source()["train"]
  assert len(source) > 0 and "score" in source[0]
  out = capsys.readouterr()
  assert "Downloading" not in out.out + out.err and "Unknown size" not in out.out + out.err
