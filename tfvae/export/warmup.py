"""TF Serving's warm-up file: `assets.extra/tf_serving_warmup_requests`.

TF Serving (`--enable_model_warmup`, on by default) replays these requests
against a new version before it serves it, so the lazy work of each signature
(graph optimisation, the session's callable, memory) happens at load time
instead of in the first real request. The file is a TFRecord of serialized
`tensorflow.serving.PredictionLog`s (at most 1000). A record that fails makes
the version fail to load, so the tests run every record against its signature.

The records are encoded here in protobuf's wire format rather than with the
`tensorflow-serving-api` package: only four small wrapper messages sit around
TensorFlow's own `TensorProto`, their field numbers are frozen by protobuf's
compatibility rules, and that package would tie tfvae's TensorFlow version to
its releases (it is a test dependency: the tests parse the file with its protos).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import tensorflow as tf

WARMUP_FILE = Path("assets.extra") / "tf_serving_warmup_requests"


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2): strings, bytes and messages."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def prediction_log(model_name: str, signature: str, inputs: Mapping[str, np.ndarray]) -> bytes:
    """A serialized `PredictionLog` holding one `PredictRequest` (field numbers
    from tensorflow_serving/apis/prediction_log.proto, predict.proto, model.proto)."""
    # ModelSpec: name = 1, signature_name = 3.
    model_spec = _field(1, model_name.encode()) + _field(3, signature.encode())
    # PredictRequest: model_spec = 1; map<string, TensorProto> inputs = 2, whose
    # entries are messages of key = 1 and value = 2.
    entries = (
        _field(1, key.encode()) + _field(2, tf.make_tensor_proto(value).SerializeToString())
        for key, value in sorted(inputs.items())
    )
    request = _field(1, model_spec) + b"".join(_field(2, entry) for entry in entries)
    # PredictionLog: predict_log = 6; PredictLog: request = 1.
    return _field(6, _field(1, request))


def write_warmup_file(
    version_dir: Path, model_name: str, requests: Mapping[str, Mapping[str, np.ndarray]]
) -> Path:
    """Write one record per signature, `requests` being signature -> inputs."""
    path = version_dir / WARMUP_FILE
    path.parent.mkdir()
    with tf.io.TFRecordWriter(str(path)) as writer:
        for signature, inputs in requests.items():
            writer.write(prediction_log(model_name, signature, inputs))
    return path
