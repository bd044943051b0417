"""Abusive inputs to the exported signatures: other dtypes, shapes, NaN and
counts past the limit are refused; Python values are converted.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from tfvae import export

# --- exported signatures ------------------------------------------------------------


@pytest.fixture(scope="module")
def served(untrained_tiny_vae, tmp_path_factory):
    version = export.export_savedmodel(untrained_tiny_vae, tmp_path_factory.mktemp("served"), "vae")
    return version, tf.saved_model.load(str(version)).signatures


IMAGE_SIGNATURES = ("serving_default", "reconstruct", "encode", "elbo")


@pytest.mark.parametrize("name", IMAGE_SIGNATURES)
def test_tensors_of_another_dtype_are_refused(served, name):
    """A tensor of any dtype but float32 is an InvalidArgumentError naming both
    dtypes (the signature is never traced again for it)."""
    fn = served[1][name]
    for dtype in (tf.int32, tf.uint8, tf.float16, tf.float64, tf.bool, tf.string):
        with pytest.raises(tf.errors.InvalidArgumentError, match="expected to be a float tensor"):
            fn(images=tf.zeros([2, 28, 28, 1], dtype))
    decode, sample = served[1]["decode"], served[1]["sample"]
    for dtype in (tf.int32, tf.float64):
        with pytest.raises(tf.errors.InvalidArgumentError, match="expected to be a float tensor"):
            decode(z=tf.zeros([2, 2], dtype))
    for count in (tf.constant(3, tf.int64), tf.constant(3.0)):
        with pytest.raises(tf.errors.InvalidArgumentError, match="expected to be a int32 tensor"):
            sample(count=count, seed=tf.constant(0))


def test_python_values_are_converted_then_clipped(served):
    """Documented result: numpy arrays and lists (what REST JSON becomes) are
    converted to float32 by the client, so uint8 pixels 0..255 are accepted and
    clipped to [0, 1]: the same as feeding `pixels > 0`."""
    encode = served[1]["encode"]
    grey = np.random.default_rng(0).integers(0, 256, (3, 28, 28, 1)).astype(np.uint8)
    got = encode(images=grey)
    want = encode(images=tf.constant((grey > 0).astype(np.float32)))
    for key in want:
        np.testing.assert_array_equal(got[key].numpy(), want[key].numpy())
    assert encode(images=grey.tolist())["z_mean"].shape == (3, 2)


@pytest.mark.parametrize("name", IMAGE_SIGNATURES)
def test_wrong_rank_or_size_is_refused(served, name):
    fn = served[1][name]
    refused = (TypeError, ValueError, tf.errors.InvalidArgumentError)
    for shape in ([784], [2, 784], [28, 28, 1], [1, 2, 28, 28, 1], [2, 27, 28, 1], [2, 28, 28, 3]):
        with pytest.raises(refused):
            fn(images=tf.zeros(shape))
    with pytest.raises(TypeError, match="missing a required argument"):
        fn()
    with pytest.raises(TypeError, match="unexpected keyword argument"):
        fn(images=tf.zeros([1, 28, 28, 1]), extra=tf.zeros([1]))


def test_raw_session_refuses_bad_dtype_nan_and_count(served):
    """TF Serving feeds the graph from C++ without the Python client's checks:
    fed the raw way, wrong dtypes, NaN pixels and too many samples are each an
    InvalidArgumentError, and the session keeps serving afterwards."""
    version, _ = served
    graph = tf.Graph()
    with tf.compat.v1.Session(graph=graph) as session:
        meta = tf.compat.v1.saved_model.loader.load(session, ["serve"], str(version))

        def run(signature, feeds, output):
            info = meta.signature_def[signature]
            fetch = graph.get_tensor_by_name(info.outputs[output].name)
            feed = {
                graph.get_tensor_by_name(info.inputs[key].name).ref(): value
                for key, value in feeds.items()
            }
            return session._do_run(None, [], [fetch], feed, None, None)[0]

        good = np.zeros((2, 28, 28, 1), np.float32)
        nan = good.copy()
        nan[1, 3, 3, 0] = np.nan
        for signature, output in (("reconstruct", "probabilities"), ("elbo", "elbo")):
            for bad in (good.astype(np.float64), good.astype(np.int32), nan):
                with pytest.raises(tf.errors.InvalidArgumentError):
                    run(signature, {"images": bad}, output)
        with pytest.raises(tf.errors.InvalidArgumentError, match="finite"):
            run("encode", {"images": nan}, "z_mean")
        with pytest.raises(tf.errors.InvalidArgumentError):
            run("decode", {"z": np.zeros((2, 3), np.float32)}, "logits")
        for count in (-1, export.MAX_SAMPLE_COUNT + 1):
            with pytest.raises(tf.errors.InvalidArgumentError, match="count must be"):
                run("sample", {"count": np.int32(count), "seed": np.int32(0)}, "probabilities")
        assert run("reconstruct", {"images": good}, "probabilities").shape == (2, 28, 28, 1)


def test_nan_in_reconstruct_is_refused(served):
    x = np.zeros((2, 28, 28, 1), np.float32)
    x[0, 0, 0, 0] = np.nan
    with pytest.raises(tf.errors.InvalidArgumentError, match="finite pixels"):
        served[1]["reconstruct"](images=tf.constant(x))


def test_very_large_batch_works(served, untrained_tiny_vae):
    """20 000 images (63 MB) in one request: right shapes, and rows equal to
    the same images sent alone."""
    x = (np.random.default_rng(0).random((20_000, 28, 28, 1)) < 0.3).astype(np.float32)
    sig = served[1]
    big = {name: sig[name](images=tf.constant(x)) for name in ("reconstruct", "encode", "elbo")}
    assert big["reconstruct"]["probabilities"].shape == (20_000, 28, 28, 1)
    assert big["encode"]["z_mean"].shape == (20_000, 2)
    assert big["elbo"]["elbo"].shape == (20_000,)
    assert np.isfinite(big["elbo"]["elbo"].numpy()).all()
    rows = [0, 12_345, 19_999]
    small = sig["encode"](images=tf.constant(x[rows]))
    np.testing.assert_allclose(big["encode"]["z_mean"].numpy()[rows], small["z_mean"], atol=1e-5)


def test_sample_count_limit_is_inclusive(served):
    got = served[1]["sample"](count=tf.constant(export.MAX_SAMPLE_COUNT), seed=tf.constant(0))
    assert got["probabilities"].shape == (export.MAX_SAMPLE_COUNT, 28, 28, 1)
    with pytest.raises(tf.errors.InvalidArgumentError, match=f"<= {export.MAX_SAMPLE_COUNT}"):
        served[1]["sample"](count=tf.constant(export.MAX_SAMPLE_COUNT + 1), seed=tf.constant(0))
