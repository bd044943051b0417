"""Exports run where they will be deployed: a fresh Python without tfvae or TFP,
`saved_model_cli` (which loads like TF Serving's C++ server), TF Serving's REST
and gRPC encodings, and the LiteRT interpreter; each is compared with Keras."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfvae import export
from tfvae.data import load_dataset, train_pipeline
from tfvae.export import ExportError
from tfvae.export.savedmodel import serving_scores
from tfvae.export.warmup import WARMUP_FILE
from tfvae.model import VAE

PYTHON = sys.executable
SAVED_MODEL_CLI = str(Path(sys.executable).with_name("saved_model_cli"))
ATOL = 1e-5
N_IMAGES = 64
QUIET_ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}


# --- fixtures ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def mnist_slice():
    return load_dataset("mnist").limit(12_800, N_IMAGES)


@pytest.fixture(scope="module")
def model(mnist_slice):
    """A VAE trained for 200 steps: its outputs are far from the 0.5 of a fresh one."""
    keras.utils.set_random_seed(0)
    vae = VAE(seed=0)
    vae.build()
    vae.compile(optimizer=keras.optimizers.Adam(1e-3))
    vae.fit(
        train_pipeline(mnist_slice, 128).repeat(),
        steps_per_epoch=200,
        epochs=1,
        shuffle=False,
        verbose=0,
    )
    return vae


@pytest.fixture(scope="module")
def images(mnist_slice):
    return mnist_slice.fixed_binarized_test()


@pytest.fixture(scope="module")
def codes(model):
    return np.random.default_rng(1).normal(size=(N_IMAGES, model.latent_dim)).astype(np.float32)


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    return tmp_path_factory.mktemp("exports")


@pytest.fixture(scope="module")
def version_dir(model, images, exports):
    return export.export_savedmodel(model, exports, "vae", warmup_images=images)


@pytest.fixture(scope="module")
def loaded(version_dir):
    return tf.saved_model.load(str(version_dir))


@pytest.fixture(scope="module")
def tflite_dirs(model, images, exports):
    return {
        q: export.export_tflite(model, exports / q, "vae", quantize=q, check_images=images)
        for q in export.QUANTIZATIONS
        if q != "int8"  # int8 inputs and outputs: tests/test_export_fidelity.py
    }


def keras_outputs(model, images, codes) -> dict[str, np.ndarray]:
    """What every signature must return, computed with the Keras model."""
    z_mean, z_stddev = model.encoder.params(images)
    p_x = model.decode(codes)
    terms = model.elbo_terms(images, seed=export.ELBO_SEED)
    return {
        "reconstruct/probabilities": model(images).numpy(),
        "encode/z_mean": z_mean.numpy(),
        "encode/z_stddev": z_stddev.numpy(),
        "decode/probabilities": p_x.mean().numpy(),
        "decode/logits": model.decoder.outputs(codes).numpy(),
        **{f"elbo/{key}": terms[key].numpy() for key in ("elbo", "kl", "log_likelihood")},
        **{f"score/{k}": v.numpy() for k, v in serving_scores(model, tf.constant(images)).items()},
    }


def run(args, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(
        args, capture_output=True, text=True, env=QUIET_ENV, timeout=120, **kwargs
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


# --- SavedModel layout and versions --------------------------------------------------


def test_savedmodel_layout_and_next_version(model, exports, version_dir):
    assert version_dir == exports / "vae" / "1"
    assert (version_dir / "saved_model.pb").is_file()
    assert (version_dir / "variables" / "variables.index").is_file()
    assert (version_dir / WARMUP_FILE).is_file()
    second = export.export_savedmodel(model, exports / "again", "vae")
    third = export.export_savedmodel(model, exports / "again", "vae")
    assert (second.name, third.name) == ("1", "2")
    assert export.export_savedmodel(model, exports / "again", "vae", version=7).name == "7"
    assert export.next_version(exports / "again", "vae") == 8
    with pytest.raises(ExportError, match="already exists"):
        export.export_savedmodel(model, exports / "again", "vae", version=2)
    assert sorted(p.name for p in (exports / "again" / "vae").iterdir()) == ["1", "2", "7"]


def test_user_errors_are_export_errors(model, tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("not a folder")
    with pytest.raises(ExportError, match="not a folder"):
        export.export_savedmodel(model, a_file, "vae")
    with pytest.raises(ExportError, match="cannot create"):
        export.export_savedmodel(model, a_file / "below", "vae")
    (tmp_path / "taken").write_text("")
    with pytest.raises(ExportError, match="not a folder"):
        export.export_tflite(model, tmp_path, "taken")
    with pytest.raises(ExportError, match="invalid model name"):
        export.export_savedmodel(model, tmp_path, "../up")
    with pytest.raises(ExportError, match="positive integer"):
        export.export_savedmodel(model, tmp_path, "vae", version=0)
    with pytest.raises(ExportError, match="quantize must be one of"):
        export.export_tflite(model, tmp_path, "vae", quantize="int4")
    with pytest.raises(ExportError, match="check_images"):
        export.export_tflite(model, tmp_path, "vae", check_images=np.zeros((2, 28, 28)))
    for bad in (np.zeros((0, 28, 28, 1)), np.zeros((2, 784)), 0.5, np.full((1, 28, 28, 1), np.nan)):
        with pytest.raises(ExportError, match="warmup_images must be"):
            export.export_savedmodel(model, tmp_path / "warmup", "vae", warmup_images=bad)
    assert not (tmp_path / "warmup").exists()  # refused before anything is written
    with pytest.raises(ExportError, match="expected a tfvae VAE"):
        export.export_savedmodel(keras.Sequential([keras.layers.Dense(2)]), tmp_path, "vae")


# --- a separate process without tfvae or TFP ------------------------------------------

LOAD_SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np
    import tensorflow as tf

    export_dir, inputs_path, out_path = sys.argv[1:]
    inputs = np.load(inputs_path)
    signatures = tf.saved_model.load(export_dir).signatures
    images, z = tf.constant(inputs["images"]), tf.constant(inputs["z"])
    results = {}
    for name in ("serving_default", "reconstruct", "encode", "elbo", "score"):
        for key, value in signatures[name](images=images).items():
            results[f"{name}/{key}"] = value.numpy()
    for key, value in signatures["decode"](z=z).items():
        results[f"decode/{key}"] = value.numpy()
    for tag, seed in (("a", 7), ("b", 7), ("c", 8)):
        out = signatures["sample"](count=tf.constant(5), seed=tf.constant(seed))
        results[f"sample/{tag}"] = out["probabilities"].numpy()
    banned = ("tfvae", "tensorflow_probability")
    foreign = sorted(m for m in sys.modules if m.split(".")[0] in banned)
    assert not foreign, foreign
    np.savez(out_path, **results)
    """
)


SAMPLES = ("sample/a", "sample/b", "sample/c")
SCORE_COLUMNS = ("elbo", "kl", "log_likelihood", "nll", "bits_per_dim", "complexity_bits")


def test_the_score_signature_is_tfvae_score_at_its_k(model, images, loaded):
    """`score` gives what `tfvae score -k 100` gives: the code length and the
    default score (this one-layer model's Likelihood Regret, the same draws
    of z) to float32 precision, the NLL within the IW estimates' spread (its
    z are other draws), bits/dim from it. (Its ELBO terms are the `elbo`
    signature's: `test_fresh_process_matches_keras`.)"""
    from tfvae.scoring import default_score, score

    got = {k: v.numpy() for k, v in loaded.signatures["score"](images=tf.constant(images)).items()}
    want = score(model, images, k=export.SCORE_K, regret=True)
    assert default_score(model) == "regret"
    np.testing.assert_array_equal(got["complexity_bits"], want["complexity_bits"])
    np.testing.assert_allclose(got["score"], want["score_regret"], rtol=1e-4, atol=1e-3)
    # Two estimates from independent draws: their mean difference is within
    # 4 standard errors of 0 (a missing log K alone would be 4.6 nats).
    diff = got["nll"] - want["nll"]
    assert abs(diff.mean()) < 4 * diff.std() / np.sqrt(len(diff))
    np.testing.assert_allclose(got["bits_per_dim"], got["nll"] / (784 * np.log(2)), rtol=1e-6)


def test_fresh_process_matches_keras(model, images, codes, version_dir, tmp_path):
    script = tmp_path / "load.py"
    script.write_text(LOAD_SCRIPT)
    np.savez(tmp_path / "inputs.npz", images=images, z=codes)
    run([PYTHON, script, version_dir, tmp_path / "inputs.npz", tmp_path / "out.npz"])
    got = dict(np.load(tmp_path / "out.npz"))
    want = keras_outputs(model, images, codes)
    want["serving_default/probabilities"] = want["reconstruct/probabilities"]
    assert set(got) - set(want) == set(SAMPLES)
    for key, value in want.items():
        if key.startswith(("elbo/", "score/")):
            # The same seed draws the same z; what is left is float32 summation order
            # over 784 pixel terms of ~100 nats (relative 1e-7 each): 1e-3 nats is ample
            # (2e-3 for the score, which is in bits).
            np.testing.assert_allclose(got[key], value, atol=2e-3, rtol=0, err_msg=key)
        else:
            np.testing.assert_allclose(got[key], value, atol=ATOL, rtol=0, err_msg=key)
    assert got["elbo/elbo"].mean() > -250  # trained: far above a fresh model's ~-545
    assert got["sample/a"].shape == (5, *model.image_shape)
    np.testing.assert_array_equal(got["sample/a"], got["sample/b"])
    assert np.abs(got["sample/a"] - got["sample/c"]).max() > 0.1
    np.testing.assert_allclose(got["sample/a"], model.sample(5, seed=7).numpy(), atol=ATOL)


# --- saved_model_cli: the TF1/C++ loading path of TF Serving ------------------------------


@pytest.mark.slow
def test_saved_model_cli_show_and_run(model, images, codes, version_dir, tmp_path):
    shown = run([SAVED_MODEL_CLI, "show", "--dir", version_dir, "--all"]).stdout
    for name in export.SIGNATURES:
        assert f"signature_def['{name}']" in shown
    for word in ("images", "z_mean", "z_stddev", "logits", "count", "seed", "log_likelihood"):
        assert f"['{word}']" in shown
    # Only seeded (stateless) randomness, so every signature is reproducible.
    ops = shown[shown.index("contains the following ops") :].split("}")[0]
    assert "StatelessRandomNormalV2" in ops
    assert not {"RandomStandardNormal", "RandomUniform"} & set(re.findall(r"'(\w+)'", ops))

    np.save(tmp_path / "images.npy", images[:8])
    np.save(tmp_path / "z.npy", codes[:8])
    want = keras_outputs(model, images[:8], codes[:8])
    for signature, feed, keys in (
        ("serving_default", "images=" + str(tmp_path / "images.npy"), ["probabilities"]),
        ("decode", "z=" + str(tmp_path / "z.npy"), ["probabilities", "logits"]),
    ):
        out = tmp_path / signature
        run(
            [SAVED_MODEL_CLI, "run", "--dir", version_dir, "--tag_set", "serve"]
            + ["--signature_def", signature, "--inputs", feed, "--outdir", out]
        )
        for key in keys:
            ref = want[f"{'reconstruct' if signature == 'serving_default' else signature}/{key}"]
            np.testing.assert_allclose(np.load(out / f"{key}.npy"), ref, atol=ATOL, rtol=0)


# --- TF Serving request encodings ---------------------------------------------------------


def serve_rest(loaded, body: str) -> str:
    """Answer a TF Serving REST `:predict` body the way the server does.

    Row form: `instances` is a list, one entry per batch element, either the
    value of the only input or an object of named inputs; entries are stacked.
    Columnar form: `inputs` is the value of the only input or an object of named
    whole tensors. Values become tensors of the signature's dtypes. The answer
    is `predictions` (rows) or `outputs` (columns), one key unwrapped.
    """
    request = json.loads(body)
    fn = loaded.signatures[request.get("signature_name", "serving_default")]
    specs = fn.structured_input_signature[1]
    if "instances" in request:
        rows = request["instances"]
        if not isinstance(rows[0], dict):
            (only,) = specs
            rows = [{only: row} for row in rows]
        columns = {key: [row[key] for row in rows] for key in specs}
    else:
        columns = request["inputs"]
        if not isinstance(columns, dict):
            (only,) = specs
            columns = {only: columns}
    tensors = {key: tf.constant(columns[key], dtype=spec.dtype) for key, spec in specs.items()}
    outputs = {key: value.numpy().tolist() for key, value in fn(**tensors).items()}
    if "instances" in request:
        if len(outputs) == 1:
            (predictions,) = outputs.values()
        else:
            n = len(next(iter(outputs.values())))
            predictions = [{key: value[i] for key, value in outputs.items()} for i in range(n)]
        return json.dumps({"predictions": predictions})
    (single,) = outputs.values() if len(outputs) == 1 else [outputs]
    return json.dumps({"outputs": single})


def test_rest_json_row_and_columnar_forms(model, images, codes, loaded):
    x, z = images[:3], codes[:3]
    want = keras_outputs(model, x, z)

    rows = json.loads(serve_rest(loaded, json.dumps({"instances": x.tolist()})))
    np.testing.assert_allclose(rows["predictions"], want["reconstruct/probabilities"], atol=ATOL)

    body = {"signature_name": "encode", "instances": [{"images": image} for image in x.tolist()]}
    rows = json.loads(serve_rest(loaded, json.dumps(body)))["predictions"]
    assert sorted(rows[0]) == ["z_mean", "z_stddev"]
    np.testing.assert_allclose([r["z_mean"] for r in rows], want["encode/z_mean"], atol=ATOL)

    body = {"signature_name": "decode", "inputs": {"z": z.tolist()}}
    cols = json.loads(serve_rest(loaded, json.dumps(body)))["outputs"]
    np.testing.assert_allclose(cols["logits"], want["decode/logits"], atol=ATOL)
    np.testing.assert_allclose(cols["probabilities"], want["decode/probabilities"], atol=ATOL)

    body = {"signature_name": "elbo", "inputs": x.tolist()}
    cols = json.loads(serve_rest(loaded, json.dumps(body)))["outputs"]
    np.testing.assert_allclose(cols["elbo"], want["elbo/elbo"], atol=1e-3)

    body = {"signature_name": "sample", "inputs": {"count": 2, "seed": 3}}
    cols = json.loads(serve_rest(loaded, json.dumps(body)))["outputs"]
    np.testing.assert_allclose(cols, model.sample(2, seed=3).numpy(), atol=ATOL)


def test_grpc_predict_request_round_trip(model, images, codes, loaded):
    from tensorflow_serving.apis import predict_pb2

    want = keras_outputs(model, images[:4], codes[:4])
    for signature, inputs in (
        ("reconstruct", {"images": images[:4]}),
        ("encode", {"images": images[:4]}),
        ("decode", {"z": codes[:4]}),
        ("elbo", {"images": images[:4]}),
        ("sample", {"count": np.int32(3), "seed": np.int32(11)}),
    ):
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "vae"
        request.model_spec.signature_name = signature
        for key, value in inputs.items():
            request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
        received = predict_pb2.PredictRequest.FromString(request.SerializeToString())
        feeds = {key: tf.make_ndarray(proto) for key, proto in received.inputs.items()}
        for key, value in inputs.items():
            np.testing.assert_array_equal(feeds[key], value)
            assert feeds[key].dtype == np.asarray(value).dtype
        fn = loaded.signatures[received.model_spec.signature_name]
        response = predict_pb2.PredictResponse()
        for key, value in fn(**{k: tf.constant(v) for k, v in feeds.items()}).items():
            response.outputs[key].CopyFrom(tf.make_tensor_proto(value.numpy()))
        answer = predict_pb2.PredictResponse.FromString(response.SerializeToString())
        got = {key: tf.make_ndarray(proto) for key, proto in answer.outputs.items()}
        if signature == "sample":
            np.testing.assert_allclose(
                got["probabilities"], model.sample(3, seed=11).numpy(), atol=ATOL
            )
            continue
        for key, value in got.items():
            atol = 1e-3 if signature == "elbo" else ATOL
            np.testing.assert_allclose(value, want[f"{signature}/{key}"], atol=atol, rtol=0)


# --- TF Serving's warm-up requests ------------------------------------------------------

WARMUP_SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    export_dir, out_path = sys.argv[1:]
    path = f"{export_dir}/assets.extra/tf_serving_warmup_requests"
    requests = []
    for record in tf.data.TFRecordDataset(path):  # checks every record's CRC
        log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
        assert log.WhichOneof("log_type") == "predict_log", log.WhichOneof("log_type")
        requests.append(log.predict_log.request)
    feeds = {
        r.model_spec.signature_name: {k: tf.make_ndarray(v) for k, v in r.inputs.items()}
        for r in requests
    }
    assert len(feeds) == len(requests), "one request per signature"
    results = {}
    # What TF Serving's warm-up does (RunPredict): a TF1 session of the SavedModel,
    # the signature's method checked, the request's inputs matched to the
    # signature's, fed to its tensors by name, all its outputs fetched.
    with tf.compat.v1.Session(graph=tf.Graph()) as session:
        meta = tf.compat.v1.saved_model.loader.load(session, ["serve"], export_dir)
        for name, inputs in feeds.items():
            info = meta.signature_def[name]
            assert info.method_name == "tensorflow/serving/predict", info.method_name
            assert sorted(inputs) == sorted(info.inputs), (name, sorted(inputs))
            fetches = {key: tensor.name for key, tensor in info.outputs.items()}
            got = session.run(fetches, {info.inputs[k].name: v for k, v in inputs.items()})
            results.update({f"session/{name}/{key}": value for key, value in got.items()})
    # And the same requests through tf.saved_model.load's signatures.
    functions = tf.saved_model.load(export_dir).signatures
    for name, inputs in feeds.items():
        got = functions[name](**{key: tf.constant(value) for key, value in inputs.items()})
        results.update({f"function/{name}/{key}": value.numpy() for key, value in got.items()})
    banned = ("tfvae", "tensorflow_probability")
    foreign = sorted(m for m in sys.modules if m.split(".")[0] in banned)
    assert not foreign, foreign
    np.savez(out_path, **results)
    """
)


def warmup_requests(version_dir: Path) -> list:
    """The file's `PredictRequest`s, parsed with TF Serving's own protos."""
    from tensorflow_serving.apis import prediction_log_pb2

    requests = []
    for record in tf.data.TFRecordDataset(str(version_dir / WARMUP_FILE)):
        raw = record.numpy()
        log = prediction_log_pb2.PredictionLog.FromString(raw)
        assert log.WhichOneof("log_type") == "predict_log"
        # The hand-written encoding is byte for byte the protos' canonical one.
        assert log.SerializeToString(deterministic=True) == raw
        requests.append(log.predict_log.request)
    return requests


def test_warmup_requests_are_real_requests(model, images, version_dir, loaded, tmp_path):
    requests = warmup_requests(version_dir)
    assert [r.model_spec.signature_name for r in requests] == list(export.SIGNATURES)
    assert len(requests) <= 1000  # TF Serving refuses more
    z_mean = model.encoder.params(images[:1])[0].numpy()
    want = {"images": images[:1], "z": z_mean, "count": np.int32(1), "seed": np.int32(0)}
    for request in requests:
        assert request.model_spec.name == "vae"
        specs = loaded.signatures[request.model_spec.signature_name].structured_input_signature[1]
        assert sorted(request.inputs) == sorted(specs)
        for key, proto in request.inputs.items():
            value = tf.make_ndarray(proto)
            assert value.dtype == specs[key].dtype.as_numpy_dtype
            np.testing.assert_array_equal(value, want[key], err_msg=key)
    # Without images: one binary sample of the model.
    default = warmup_requests(export.export_savedmodel(model, tmp_path, "vae"))[0]
    image = tf.make_ndarray(default.inputs["images"])
    assert image.shape == (1, *model.image_shape) and set(np.unique(image)) <= {0.0, 1.0}


@pytest.mark.slow
def test_warmup_requests_run_in_a_fresh_process(model, images, version_dir, tmp_path):
    script = tmp_path / "warmup.py"
    script.write_text(WARMUP_SCRIPT)
    run([PYTHON, script, version_dir, tmp_path / "out.npz"])
    got = dict(np.load(tmp_path / "out.npz"))
    z_mean = model.encoder.params(images[:1])[0].numpy()
    want = keras_outputs(model, images[:1], z_mean)
    want["serving_default/probabilities"] = want["reconstruct/probabilities"]
    want["sample/probabilities"] = model.sample(1, seed=0).numpy()
    assert sorted(got) == sorted(
        f"{path}/{key}" for path in ("session", "function") for key in want
    )
    for key, value in want.items():
        atol = 1e-3 if key.startswith("elbo/") else ATOL  # see test_fresh_process_matches_keras
        for path in ("session", "function"):
            out = got[f"{path}/{key}"]
            assert out.shape == value.shape and out.shape[0] == 1 and np.isfinite(out).all()
            np.testing.assert_allclose(out, value, atol=atol, rtol=0, err_msg=f"{path}/{key}")


# --- input policy ---------------------------------------------------------------------


def test_out_of_range_pixels_are_clipped_and_nan_refused(loaded, images):
    sig = loaded.signatures
    x = images[:4].copy()
    noisy = x * 3.0 - 1.0  # 0 -> -1, 1 -> 2: clipped back to 0 and 1
    noisy[0, 0, 0, 0] = 1e30
    x[0, 0, 0, 0] = 1.0
    for name in ("reconstruct", "encode", "elbo", "score"):
        clean, wild = sig[name](images=tf.constant(x)), sig[name](images=tf.constant(noisy))
        assert clean.keys() == wild.keys()
        for key in clean:
            np.testing.assert_array_equal(clean[key].numpy(), wild[key].numpy(), err_msg=name)
    for bad in (np.nan, np.inf, -np.inf):
        x[1, 5, 5, 0] = bad
        for name in ("serving_default", "encode", "elbo", "score"):
            with pytest.raises(tf.errors.InvalidArgumentError, match="finite pixels"):
                sig[name](images=tf.constant(x))
    with pytest.raises(tf.errors.InvalidArgumentError, match="z must be finite"):
        sig["decode"](z=tf.constant([[np.nan] * 20], tf.float32))
    for count in (-1, export.MAX_SAMPLE_COUNT + 1):
        with pytest.raises(tf.errors.InvalidArgumentError, match="count must be"):
            sig["sample"](count=tf.constant(count), seed=tf.constant(0))


def test_infinite_or_nan_codes_are_refused_by_decode(loaded):
    """One non-finite number in one code fails the whole request."""
    for bad in (np.inf, -np.inf, np.nan):
        z = np.zeros((3, 20), np.float32)
        z[1, 7] = bad
        with pytest.raises(tf.errors.InvalidArgumentError, match="z must be finite"):
            loaded.signatures["decode"](z=tf.constant(z))
    z[1, 7] = 5.0
    assert loaded.signatures["decode"](z=tf.constant(z))["probabilities"].shape == (3, 28, 28, 1)


def test_empty_batch_gives_empty_outputs(loaded, model):
    empty = tf.zeros([0, *model.image_shape])
    shapes = {
        "reconstruct": {"probabilities": (0, 28, 28, 1)},
        "encode": {"z_mean": (0, 20), "z_stddev": (0, 20)},
        "elbo": {"elbo": (0,), "kl": (0,), "log_likelihood": (0,)},
        "score": {key: (0,) for key in (*SCORE_COLUMNS, "score")},
    }
    for name, want in shapes.items():
        got = loaded.signatures[name](images=empty)
        assert {key: tuple(value.shape) for key, value in got.items()} == want
    got = loaded.signatures["decode"](z=tf.zeros([0, 20]))
    assert {k: tuple(v.shape) for k, v in got.items()} == {
        "probabilities": (0, 28, 28, 1),
        "logits": (0, 28, 28, 1),
    }
    got = loaded.signatures["sample"](count=tf.constant(0), seed=tf.constant(1))
    assert tuple(got["probabilities"].shape) == (0, 28, 28, 1)


def test_wrong_shape_or_dtype_is_refused(loaded, version_dir):
    encode = loaded.signatures["encode"]
    refused = (TypeError, ValueError, tf.errors.InvalidArgumentError)
    for bad in (tf.zeros([2, 28, 28, 3]), tf.zeros([2, 784]), tf.zeros([28, 28, 1])):
        with pytest.raises(refused):
            encode(images=bad)
        with pytest.raises(refused):
            encode(images=bad.numpy())
    with pytest.raises(tf.errors.InvalidArgumentError, match="float"):
        encode(images=tf.zeros([2, 28, 28, 1], tf.float64))
    with pytest.raises(refused):
        loaded.signatures["decode"](z=tf.zeros([2, 19]))
    with pytest.raises(refused):
        loaded.signatures["sample"](count=tf.constant([3]), seed=tf.constant(0))

    # TF Serving feeds its C++ session without the Python client's shape check: feed
    # the graph the raw way (private `_do_run`) to see the graph itself refuse.
    graph = tf.Graph()
    with tf.compat.v1.Session(graph=graph) as session:
        meta = tf.compat.v1.saved_model.loader.load(session, ["serve"], str(version_dir))
        info = meta.signature_def["encode"]
        feed = graph.get_tensor_by_name(info.inputs["images"].name)
        fetch = graph.get_tensor_by_name(info.outputs["z_mean"].name)
        ok = session._do_run(
            None, [], [fetch], {feed.ref(): np.zeros((2, 28, 28, 1), "f4")}, None, None
        )
        assert ok[0].shape == (2, 20)
        for bad in (
            np.zeros((2, 28, 28, 2), "f4"),
            np.zeros((2, 784), "f4"),
            np.zeros((2, 28, 28, 1)),
        ):
            with pytest.raises(tf.errors.InvalidArgumentError):
                session._do_run(None, [], [fetch], {feed.ref(): bad}, None, None)


# --- atomicity --------------------------------------------------------------------------

KILL_SCRIPT = textwrap.dedent(
    """
    import sys
    from tfvae.export import export_savedmodel
    from tfvae.model import VAE

    model = VAE(hidden_units=(1000,))
    model.build()
    while True:
        export_savedmodel(model, sys.argv[1], "vae")
    """
)


@pytest.mark.slow
def test_killed_export_leaves_no_version(model, tmp_path):
    export.export_savedmodel(model, tmp_path, "vae")  # version 1 exists before
    base = tmp_path / "vae"
    script = tmp_path / "kill.py"
    script.write_text(KILL_SCRIPT)
    process = subprocess.Popen([PYTHON, script, tmp_path], env=QUIET_ENV, stderr=subprocess.PIPE)
    try:
        deadline, temp = time.monotonic() + 90, None
        while temp is None and time.monotonic() < deadline:
            assert process.poll() is None, process.stderr.read().decode()[-2000:]
            # Wait until the SavedModel is being written (files in the temp folder).
            for path in base.iterdir():
                if path.name.startswith(".tmp-") and any(p.is_file() for p in path.rglob("*")):
                    temp = path
            time.sleep(0.002)
        assert temp is not None, "the export never started writing"
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    published = sorted(int(p.name) for p in base.iterdir() if p.name.isdigit())
    assert published == list(range(1, len(published) + 1))
    for version in published:  # every published version is complete
        assert (base / str(version) / "saved_model.pb").is_file()
        assert (base / str(version) / "variables" / "variables.index").is_file()
        assert (base / str(version) / WARMUP_FILE).is_file()
    if temp.exists():  # killed mid-write (a finish between look and kill is possible)
        killed_version = int(temp.name.split("-")[1])
        assert killed_version == published[-1] + 1
        assert any(p.is_file() for p in temp.rglob("*"))
    after = export.export_savedmodel(model, tmp_path, "vae")
    assert after.name == str(published[-1] + 1)
    assert not [p for p in base.iterdir() if p.name.startswith(".")]  # stale temp removed
    assert tf.saved_model.load(str(after)).signatures["encode"] is not None


def test_tflite_folder_is_replaced_atomically(model, tmp_path):
    first = export.export_tflite(model, tmp_path, "vae", quantize="none")
    before = json.loads((first / "manifest.json").read_text())
    second = export.export_tflite(model, tmp_path, "vae", quantize="float16")
    assert first == second
    after = json.loads((second / "manifest.json").read_text())
    assert (before["quantization"], after["quantization"]) == ("none", "float16")
    assert after["checked_on"].startswith("256 binary samples of the model (seed 0)")
    assert sorted(p.name for p in (tmp_path / "vae").iterdir()) == ["tflite"]
    assert sorted(p.name for p in second.iterdir()) == [
        "decoder.tflite",
        "encoder.tflite",
        "manifest.json",
    ]


# --- TFLite -----------------------------------------------------------------------------


def lite_interpreters(path: Path):
    from ai_edge_litert.interpreter import Interpreter

    yield "ai_edge_litert", Interpreter(model_path=str(path))
    yield "tf.lite", tf.lite.Interpreter(model_path=str(path))


def encoder_decoder_reference(model, images):
    """Keras outputs of the exported encoder/decoder pair, and the inputs that give them."""
    z_mean, z_stddev = (t.numpy() for t in model.encoder.params(images))
    logits = model.decoder.outputs(z_mean).numpy()
    want = {
        "encoder": {"z_mean": z_mean, "z_stddev": z_stddev},
        "decoder": {"logits": logits, "probabilities": 1 / (1 + np.exp(-logits))},
    }
    return want, {"encoder": {"images": images}, "decoder": {"z": z_mean}}


def test_tflite_files_run_in_litert_and_match_keras(model, images, tflite_dirs):
    want, feeds = encoder_decoder_reference(model, images)
    sizes = {}
    for quantize, folder in tflite_dirs.items():
        manifest = json.loads((folder / "manifest.json").read_text())
        assert manifest["quantization"] == quantize
        for part, info in manifest["files"].items():
            path = folder / info["file"]
            assert info["size_bytes"] == path.stat().st_size
            sizes[quantize, part] = info["size_bytes"]
            assert all(
                stats[stat] <= limit
                for stats in info["fidelity"].values()
                for stat, limit in manifest["fidelity_limits"].items()
            )
            assert [i["name"] for i in info["inputs"]] == list(feeds[part])
            assert {o["name"] for o in info["outputs"]} == set(want[part])
            assert all(t["dtype"] == "float32" and t["shape"][0] == -1 for t in info["inputs"])
            for runtime, interpreter in lite_interpreters(path):
                runner = interpreter.get_signature_runner(info["signature"])
                for batch in (feeds[part], {k: v[:1] for k, v in feeds[part].items()}):
                    got = runner(**batch)
                    n = len(next(iter(batch.values())))
                    for key, value in got.items():
                        diff = np.abs(value - want[part][key][:n])
                        assert diff.max() <= info["fidelity"][key]["max_abs_diff"] * 1.01 + 1e-6
                        if quantize == "none":
                            assert diff.max() <= 1e-4, (runtime, part, key)
    for part in ("encoder", "decoder"):
        assert sizes["dynamic", part] < sizes["float16", part] < sizes["none", part]
        assert sizes["none", part] > 1_000_000  # the weights are inside (784 x 400 floats)


def test_tflite_input_policy(tflite_dirs, images):
    """Out-of-range pixels are clipped; NaN gives NaN codes (no assert op in LiteRT)."""
    from ai_edge_litert.interpreter import Interpreter

    folder = tflite_dirs["none"]
    encode = Interpreter(str(folder / "encoder.tflite")).get_signature_runner("encode")
    x = images[:3].copy()
    wild = x * 3.0 - 1.0
    wild[0, 0, 0, 0] = 1e30
    x[0, 0, 0, 0] = 1.0
    np.testing.assert_array_equal(encode(images=wild)["z_mean"], encode(images=x)["z_mean"])
    x[1, 4, 4, 0] = np.nan
    assert np.isnan(encode(images=x)["z_mean"]).any(axis=1).tolist() == [False, True, False]
    assert encode(images=x[:0])["z_mean"].shape == (0, 20)
    decode = Interpreter(str(folder / "decoder.tflite")).get_signature_runner("decode")
    assert decode(z=np.zeros((0, 20), np.float32))["probabilities"].shape == (0, 28, 28, 1)


def test_tflite_ops_are_builtin_only(tflite_dirs):
    from ai_edge_litert.interpreter import Interpreter

    for folder in tflite_dirs.values():
        for name in ("encoder.tflite", "decoder.tflite"):
            ops = {op["op_name"] for op in Interpreter(str(folder / name))._get_ops_details()}
            assert ops and not any(op.startswith("Flex") or op == "CUSTOM" for op in ops), ops


# --- ONNX ----------------------------------------------------------------------------


def test_onnx_without_tf2onnx_says_what_to_install(model, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tf2onnx", None)  # as if not installed
    with pytest.raises(ExportError, match=r"pip install 'tfvae\[onnx\]'"):
        export.export_onnx(model, tmp_path, "vae")
    assert not (tmp_path / "vae").exists()


@pytest.fixture(scope="module")
def onnx_dir(model, images, tmp_path_factory):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("tf2onnx")
    return export.export_onnx(model, tmp_path_factory.mktemp("onnx"), "vae", check_images=images)


def test_onnx_export_runs_in_onnxruntime(model, images, onnx_dir):
    import onnxruntime

    folder = onnx_dir
    manifest = json.loads((folder / "manifest.json").read_text())
    want, feeds = encoder_decoder_reference(model, images)
    for part, info in manifest["files"].items():
        assert all(f["mean"] <= export.FIDELITY["none"]["mean"] for f in info["fidelity"].values())
        session = onnxruntime.InferenceSession(str(folder / info["file"]))
        names = [o.name for o in session.get_outputs()]
        assert set(names) == set(want[part])
        for n in (len(images), 1, 0):
            got = session.run(names, {k: v[:n] for k, v in feeds[part].items()})
            for key, value in zip(names, got, strict=True):
                assert value.shape[0] == n
                np.testing.assert_allclose(value, want[part][key][:n], atol=1e-4, rtol=0)


def test_onnx_input_policy(onnx_dir, images):
    """As in the TFLite files: out-of-range pixels are clipped; a NaN pixel
    gives NaN codes for its image (no assert op in the file)."""
    import onnxruntime

    encoder = onnxruntime.InferenceSession(str(onnx_dir / "encoder.onnx"))

    def z_mean(x):
        return encoder.run(["z_mean"], {"images": x})[0]

    x = images[:3].copy()
    wild = x * 3.0 - 1.0
    wild[0, 0, 0, 0] = 1e30
    x[0, 0, 0, 0] = 1.0
    np.testing.assert_array_equal(z_mean(wild), z_mean(x))
    assert not np.array_equal(z_mean(x * 0.5), z_mean(x))  # the values do reach the codes
    x[1, 4, 4, 0] = np.nan
    assert np.isnan(z_mean(x)).any(axis=1).tolist() == [False, True, False]
