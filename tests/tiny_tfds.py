"""A small prepared TFDS set for the streamed-TFDS tests, importable by the
worker processes of the multi-worker test (`tests/` on their `sys.path`)."""

from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

# Record files per split: enough for each of two workers to read its own.
SHARDS = 4


class TinyStreamed(tfds.core.GeneratorBasedBuilder):
    """A real prepared set in `SHARDS` record files: pixel value = example index,
    label = index % 3; `binary` configs hold 0/1 pixels (index % 2)."""

    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS = [tfds.core.BuilderConfig(name="grey"), tfds.core.BuilderConfig(name="binary")]

    def _info(self) -> tfds.core.DatasetInfo:
        features = {
            "image": tfds.features.Image(shape=(6, 5, 1)),
            "label": tfds.features.ClassLabel(num_classes=3),
        }
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(40)}

    def _generate_examples(self, n: int):
        for i in range(n):
            level = i % 2 if self.builder_config.name == "binary" else i
            yield i, {"image": np.full((6, 5, 1), level, np.uint8), "label": i % 3}


def write_tiny_streamed(root: Path, config: str) -> None:
    """Prepare `tiny_streamed/<config>` under `root`, in `SHARDS` record files."""
    files = tfds.download.DownloadConfig(num_shards=SHARDS)
    TinyStreamed(config=config, data_dir=str(root)).download_and_prepare(download_config=files)
