"""Real tf.distribute strategies on the CPU: the same update for 1 and N
replicas, bit-identical multi-worker training, and the speed switches (XLA,
mixed precision) that must not change the numbers."""

import json
import os
import re
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import tensorflow as tf
from harness import TFVAE, blank_run_data, invoke

from tfvae.config import TrainConfig
from tfvae.distribute import PeerLostError, Placement, make_strategy
from tfvae.errors import RunError
from tfvae.fitting import compiled_vae

MIRRORED_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    import numpy as np, tensorflow as tf, keras
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from tfvae.model import VAE

    rng = np.random.default_rng(0)
    x = (rng.random((64, 28, 28, 1)) < 0.3).astype(np.float32)
    # One global batch of 64 in the batch format: binary images with their
    # keys, or grey levels and keys (the step binarizes); the step draws the
    # noise from the keys either way.
    batches = {
        "given": tf.data.Dataset.from_tensors({
            "images": x, "keys": rng.integers(0, 2**32, (64, 2), dtype=np.uint32)}),
        "keys": tf.data.Dataset.from_tensors({
            "intensities": rng.integers(0, 256, (64, 28, 28, 1), dtype=np.uint8),
            "keys": rng.integers(0, 2**32, (64, 2), dtype=np.uint32)}),
    }

    def one_step(strategy, initial, data):
        with strategy.scope():
            model = VAE(hidden_units=(64,), seed=0)
            model.set_weights(initial)
            model.compile(optimizer=keras.optimizers.SGD(0.1))
        history = model.fit(data, epochs=1, verbose=0, shuffle=False)
        return model.get_weights(), history.history["loss"][0]

    initial = VAE(hidden_units=(64,), seed=0).get_weights()
    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    results = {"replicas": mirrored.num_replicas_in_sync}
    for name, data in batches.items():
        single_w, single_loss = one_step(tf.distribute.get_strategy(), initial, data)
        multi_w, multi_loss = one_step(mirrored, initial, data)
        results[name] = {
            "max_weight_diff": max(float(np.abs(a - b).max()) for a, b in zip(single_w, multi_w)),
            "max_update": max(float(np.abs(a - b).max()) for a, b in zip(single_w, initial)),
            "single_loss": float(single_loss), "multi_loss": float(multi_loss)}
    print(json.dumps(results))
    """
)


def test_mirrored_two_replicas_give_the_single_device_update(tmp_path):
    """One SGD step on the same global batch: identical weights (1e-5) and the
    same logged loss. With a per-replica mean loss the update would double;
    with draws that depended on the replica, the keyed batch would differ."""
    script = tmp_path / "mirrored.py"
    script.write_text(MIRRORED_SCRIPT)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads(out.stdout.strip().splitlines()[-1])
    assert results["replicas"] == 2
    for batch in ("given", "keys"):
        result = results[batch]
        assert result["max_update"] > 1e-3  # the step really moved the weights
        assert result["max_weight_diff"] < 1e-5
        assert result["multi_loss"] == pytest.approx(result["single_loss"], rel=1e-6)


WORKER_SCRIPT = textwrap.dedent(
    """
    import os, sys
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    strategy, run_dir, out, dataset = sys.argv[1:5]
    import numpy as np, tensorflow as tf
    from tfvae.config import TrainConfig
    from tfvae.data import streams
    from tfvae.training import train

    # Which training images this process decodes: the real decode, watched.
    decoded, n_train, read = [], int(sys.argv[5]), streams.ImageFiles.decode

    def watched(self, index):
        if len(self) == n_train:
            record = lambda i: (decoded.append(i.copy()), i)[1]
            index = tf.numpy_function(record, [index], tf.int64, stateful=True)
        return read(self, tf.reshape(index, [-1]))

    streams.ImageFiles.decode = watched
    config = TrainConfig(strategy=strategy, limit=600, epochs=2, hidden_units=(32,),
                         latent_dim=2, batch_size=100, dataset=dataset, jit_compile=False,
                         conditional=sys.argv[6] == "conditional")
    result = train(config, run_dir, verbose=0)
    np.savez(out, *[w.numpy() for w in result.model.weights],
             decoded=np.concatenate(decoded) if decoded else np.zeros(0, np.int64),
             sizes=np.array([len(batch) for batch in decoded], np.int64))
    """
)


def worker_env(index, ports):
    """This process's environment with the `TF_CONFIG` of worker `index` of
    a cluster on 127.0.0.1."""
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    env = dict(
        os.environ,
        TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}),
    )
    env.pop("TFVAE_REJOINS", None)
    return env


def start_worker(command: list[str], index: int, ports, **env: str) -> subprocess.Popen:
    """Worker `index` of a localhost cluster on `ports`, running `command`
    with its output and errors in one pipe."""
    return subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=dict(worker_env(index, ports), **env),
    )


def free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def global_batches(n, batch_size, passes):
    """The batches of indices of the first `passes` epochs a streamed run with
    seed 0 trains on."""
    import keras

    from tfvae.data.pipelines import _shuffled
    from tfvae.fitting import pipeline_seed

    keras.utils.set_random_seed(0)
    batches = _shuffled(n, batch_size, pipeline_seed(0, 0))
    return [idx for _ in range(passes) for idx, _ in batches.as_numpy_iterator()]


def replica_rows(batch, share):
    """Worker `share`'s rows of a global `batch` under two workers (share 2:
    all of it, as one process reads it), as `pipelines._replica_rows` splits."""
    if share == 2:
        return batch
    m = len(batch)
    return batch[share * m // 2 : (share + 1) * m // 2]


@pytest.fixture(scope="module")
def streamed_folder(tmp_path_factory):
    """240 MNIST digits as PNGs in their class folders: 216 training images,
    so each epoch ends on a partial global batch of 16. (Digits, not noise:
    on images a model cannot learn, gradients are rounding noise that Adam
    scales up to whole steps, and no two runs agree.)"""
    from PIL import Image

    from tfvae.data import load_dataset

    folder = tmp_path_factory.mktemp("streamed")
    mnist = load_dataset("mnist")
    for i, (image, label) in enumerate(
        zip(mnist.train_images[:240], mnist.train_labels[:240], strict=True)
    ):
        (folder / str(label)).mkdir(exist_ok=True)
        Image.fromarray(image[..., 0]).save(folder / str(label) / f"{i:03d}.png")
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("source", ["mnist", "streamed", "streamed-conditional"])
def test_two_workers_train_the_weights_of_one_process_and_only_the_chief_writes(
    tmp_path, source, request
):
    """Two workers on localhost and one process train the same config (six
    steps of 100 images). The workers end bit-identical, and equal to the one
    process: each worker took its half of every global batch, not a batch of
    its own or the whole batch. Measured: 1.8e-6 at most, from the order of
    the gradient sums. Sharding turned off, or each worker shuffling with a
    seed of its own, moved weights by 1.8e-2; 1e-4 keeps a margin of 50 on
    the one side and 180 on the other.

    A streamed image folder (`TFVAE_STREAM_ABOVE_MB=0`) trains to the same
    weights, and each worker decodes only its own rows: every batch worker 0
    decoded is the first half of a global batch of the one process's
    sequence (recomputed here), worker 1's the second half, and both decoded
    their halves of every batch that trained. A conditional VAE's workers
    read each row's label beside it, and end equal to the one process too."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER_SCRIPT)
    ports = free_ports(2)
    run = tmp_path / "jobs" / "run"
    run.parent.mkdir()
    dataset, n_train = "mnist", 600
    if source.startswith("streamed"):
        dataset, n_train = f"images:{request.getfixturevalue('streamed_folder')}", 216

    def start(strategy, run_dir, out, env):
        command = [sys.executable, str(script), strategy, str(run_dir), str(tmp_path / out)]
        env = dict(env or os.environ, TFVAE_STREAM_ABOVE_MB="0")
        return subprocess.Popen(
            [*command, dataset, str(n_train), source.rpartition("-")[2]],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )

    processes = [start("multi-worker", run, f"w{i}.npz", worker_env(i, ports)) for i in range(2)]
    processes.append(start("default", tmp_path / "single", "single.npz", None))
    for process in processes:
        output, _ = process.communicate(timeout=300)
        assert process.returncode == 0, output[-3000:]
    w0, w1 = np.load(tmp_path / "w0.npz"), np.load(tmp_path / "w1.npz")
    single = np.load(tmp_path / "single.npz")
    weights = [key for key in single.files if key not in ("decoded", "sizes")]
    assert len(weights) == 8
    for key in weights:
        np.testing.assert_array_equal(w0[key], w1[key])
        np.testing.assert_allclose(w0[key], single[key], rtol=0, atol=1e-4)
    if source.startswith("streamed"):
        # Passes beyond the 2 epochs: a worker's endless stream reads ahead
        # while the run scores and saves (a fresh-clone CI run of the whole
        # suite went past 5 passes; the buffers bound it, not the epochs).
        expected = global_batches(n_train, batch_size=100, passes=40)
        for share, result in enumerate([w0, w1, single]):
            decoded = np.split(result["decoded"], np.cumsum(result["sizes"])[:-1])
            halves = {",".join(map(str, replica_rows(b, share))) for b in expected}
            strays = [len(b) for b in decoded if ",".join(map(str, b)) not in halves]
            assert not strays, f"process {share} decoded rows of no batch: sizes {strays}"
            # The 6 batches that trained: 2 epochs of 3 (100, 100, 16).
            trained = {",".join(map(str, replica_rows(b, share))) for b in expected[:6]}
            assert trained <= {",".join(map(str, batch)) for batch in decoded}
    state = json.loads((run / "config.json").read_text())
    assert state["config"]["conditional"] is source.endswith("conditional")
    assert state["status"] == "finished" and state["replicas"] == 2
    assert state["strategy_class"] == "CollectiveAllReduceStrategy"
    assert len((run / "metrics.csv").read_text().splitlines()) == 3
    assert (run / "model.keras").is_file() and not (run / "backup").exists()
    assert sorted(p.name for p in run.parent.iterdir()) == ["run"]  # the worker cleaned up


TFDS_WORKER_SCRIPT = textwrap.dedent(
    """
    import os, sys
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    strategy, run_dir, out, tests, data_dir = sys.argv[1:6]
    sys.path.insert(0, tests)
    import numpy as np, tensorflow as tf
    import tiny_tfds  # registers tiny_streamed
    from tfvae.config import TrainConfig
    from tfvae.data.tfds import TfdsImages
    from tfvae.training import train

    # Which training examples this process reads (pixel value = example
    # number): the real reader, watched.
    read, shuffled = [], TfdsImages.shuffled

    def watched(self, seed, share=None, labels=False):
        def record(index, image):
            seen = tf.numpy_function(
                lambda v: (read.append(int(v)), v)[1], [image[0, 0, 0]], tf.uint8, stateful=True)
            with tf.control_dependencies([seen]):
                return index, tf.identity(image)
        return shuffled(self, seed, share, labels).map(record)

    TfdsImages.shuffled = watched
    config = TrainConfig(strategy=strategy, dataset="tfds:tiny_streamed/grey", data_dir=data_dir,
                         epochs=2, batch_size=10, hidden_units=(16,), latent_dim=2,
                         likelihood="logistic", jit_compile=False)
    result = train(config, run_dir, verbose=0)
    np.savez(out, *[w.numpy() for w in result.model.weights], read=np.array(read, np.int64),
             iterations=int(result.model.optimizer.iterations.numpy()))
    """
)


@pytest.mark.slow
def test_two_workers_stream_a_tfds_set_each_from_its_own_files(tmp_path):
    """A streamed TFDS set (40 examples in 4 record files, the last 4 held
    out) under two workers on localhost: each worker reads only its own
    files (no example read by both, every training example by one, no test
    example), the workers end bit-identical after 2 epochs of ceil(36 / 10)
    = 4 steps, and the chief alone writes the finished run."""
    from tiny_tfds import write_tiny_streamed

    from tfvae.data import load_dataset

    root = tmp_path / "tfds"
    write_tiny_streamed(root, "grey")
    train_levels = set(
        load_dataset("tfds:tiny_streamed/grey", data_dir=str(root))
        .train_images[:, 0, 0, 0]
        .tolist()
    )
    script = tmp_path / "worker.py"
    script.write_text(TFDS_WORKER_SCRIPT)
    run, ports = tmp_path / "jobs" / "run", free_ports(2)
    run.parent.mkdir()
    tests = str(Path(__file__).parent)
    processes = [
        start_worker(
            [sys.executable, str(script), "multi-worker", str(run), str(tmp_path / f"w{i}.npz")]
            + [tests, str(root)],
            i,
            ports,
            TFVAE_STREAM_ABOVE_MB="0",
        )
        for i in range(2)
    ]
    for process in processes:
        output, _ = process.communicate(timeout=300)
        assert process.returncode == 0, output[-3000:]
    w0, w1 = np.load(tmp_path / "w0.npz"), np.load(tmp_path / "w1.npz")
    weights = [key for key in w0.files if key not in ("read", "iterations")]
    assert len(weights) == 8
    for key in weights:
        np.testing.assert_array_equal(w0[key], w1[key])
    assert int(w0["iterations"]) == int(w1["iterations"]) == 8
    own = [set(w0["read"].tolist()), set(w1["read"].tolist())]
    assert own[0] and own[1] and not own[0] & own[1]
    assert own[0] | own[1] == train_levels
    state = json.loads((run / "config.json").read_text())
    assert state["status"] == "finished" and state["replicas"] == 2
    assert len((run / "metrics.csv").read_text().splitlines()) == 3
    assert sorted(p.name for p in run.parent.iterdir()) == ["run"]


@pytest.mark.slow
def test_a_tfds_set_in_fewer_record_files_than_workers_is_one_line(tmp_path):
    """Two workers cannot each stream files of their own from one record
    file: the CLI says so in one line, before either writes a run folder."""
    from tiny_tfds import TinyStreamed

    root = tmp_path / "tfds"
    TinyStreamed(config="grey", data_dir=str(root)).download_and_prepare()  # one record file
    run, ports = tmp_path / "jobs" / "run", free_ports(2)
    run.parent.mkdir()
    command = [*TFVAE, "train", "--strategy", "multi-worker"]
    command += ["--dataset", "tfds:tiny_streamed/grey", "--data-dir", str(root)]
    command += ["--hidden", "16", "--run-dir", str(run)]
    processes = [start_worker(command, i, ports, TFVAE_STREAM_ABOVE_MB="0") for i in range(2)]
    for process in processes:
        errors, _ = process.communicate(timeout=180)
        assert process.returncode == 1, errors[-3000:]
        message = [line for line in errors.splitlines() if line.startswith("Error:")]
        assert message == [
            "Error: tfds:tiny_streamed/grey streams from 1 record file(s), fewer than the 2 "
            "workers, and each worker reads files of its own: prepare it in at least 2 "
            "(tfds.download.DownloadConfig(num_shards=2)), train on fewer workers, or keep "
            "it in memory (raise TFVAE_STREAM_ABOVE_MB)"
        ]
        assert "Traceback" not in errors
    assert list(run.parent.iterdir()) == []


AGREE_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    index, cases = json.loads(os.environ["TF_CONFIG"])["task"]["index"], json.loads(sys.argv[1])
    from pathlib import Path
    from tfvae.distribute import Placement
    placement = Placement.make("multi-worker", Path("unused"))
    print(json.dumps([placement.common_epoch(case[index], 10) for case in cases]))
    """
)


@pytest.mark.slow
def test_workers_agree_on_their_newest_common_checkpoint(tmp_path):
    """A worker killed while writing epoch 3's checkpoint holds epochs 1-2
    while the other holds 2-3: both must resume after epoch 2."""
    script = tmp_path / "agree.py"
    script.write_text(AGREE_SCRIPT)
    cases = [([2, 3], [1, 2]), ([4], [3]), ([], [1, 2]), ([5, 6], [5, 6]), ([9, 12], [9])]
    ports = free_ports(2)
    workers = [
        subprocess.Popen(
            [sys.executable, str(script), json.dumps(cases)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=worker_env(i, ports),
        )
        for i in range(2)
    ]
    answers = []
    for worker in workers:
        output, errors = worker.communicate(timeout=120)
        assert worker.returncode == 0, errors[-3000:]
        answers.append(json.loads(output.strip().splitlines()[-1]))
    assert answers[0] == answers[1] == [2, 0, 0, 6, 9]


def train_worker_command(run, epochs):
    command = [*TFVAE, "train", "--strategy", "multi-worker"]
    command += ["--limit", "3000", "--epochs", str(epochs), "--hidden", "32"]
    command += ["--latent-dim", "2", "--batch-size", "50", "--run-dir", str(run)]
    return command


@pytest.mark.slow
def test_a_killed_worker_restarted_with_the_same_command_rejoins(tmp_path):
    """SIGKILL worker 1 mid-epoch and start it again: worker 0 restarts
    itself, both resume from the same checkpoint and the job ends with every
    epoch trained once."""
    epochs, ports = 6, free_ports(2)
    run = tmp_path / "jobs" / "run"
    run.parent.mkdir()
    logs = [tmp_path / "w0.log", tmp_path / "w1.log"]

    def start(index):
        with open(logs[index], "a") as log:
            return subprocess.Popen(
                train_worker_command(run, epochs),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=worker_env(index, ports),
            )

    workers = [start(0), start(1)]
    deadline = time.monotonic() + 240
    metrics = run / "metrics.csv"
    while not (metrics.is_file() and len(metrics.read_text().splitlines()) > 2):
        assert time.monotonic() < deadline, logs[0].read_text()[-3000:]
        assert workers[0].poll() is None, logs[0].read_text()[-3000:]
        time.sleep(0.1)
    time.sleep(0.3)  # into epoch 3
    workers[1].kill()
    workers[1].wait()
    workers[1] = start(1)
    for index, worker in enumerate(workers):
        assert worker.wait(timeout=300) == 0, logs[index].read_text()[-3000:]

    chief, worker = logs[0].read_text(), logs[1].read_text()
    assert "Restarting to rejoin the job (1/10)" in chief
    resumed = [re.findall(r"Resuming after epoch (\d+)", text) for text in (chief, worker)]
    assert resumed[0] == resumed[1] and len(resumed[0]) == 1 and int(resumed[0][0]) >= 1
    rows = metrics.read_text().splitlines()[1:]
    assert [int(row.split(",")[0]) for row in rows] == list(range(1, epochs + 1))
    state = json.loads((run / "config.json").read_text())
    assert state["status"] == "finished"
    assert (run / "model.keras").is_file() and not (run / "backup").exists()
    assert sorted(p.name for p in run.parent.iterdir()) == ["run"]


def fit_steps(model, steps=5):
    rng = np.random.default_rng(1)
    x = (rng.random((steps * 32, 28, 28, 1)) < 0.3).astype(np.float32)
    keys = rng.integers(0, 2**32, (steps * 32, 2), dtype=np.uint32)
    data = tf.data.Dataset.from_tensor_slices({"images": x, "keys": keys}).batch(32)
    return model.fit(data, epochs=1, verbose=0, shuffle=False).history["loss"][0]


def build(**settings):
    config = TrainConfig(hidden_units=(64,), **settings)
    placement = Placement(tf.distribute.get_strategy(), Path("r"))
    return compiled_vae(config, blank_run_data((28, 28, 1), config.batch_size), placement)


def test_xla_gives_the_same_numbers():
    """--jit-compile changes how the step runs, not what it computes."""
    plain, compiled = build(jit_compile=False), build(jit_compile=True)
    compiled.set_weights(plain.get_weights())
    loss_plain, loss_xla = fit_steps(plain), fit_steps(compiled)
    assert loss_xla == pytest.approx(loss_plain, rel=1e-5)
    # Adam divides by sqrt(v): a near-zero gradient that XLA rounds differently
    # can move a weight by ~1e-5 in five steps, so weights get 1e-4.
    for a, b in zip(plain.get_weights(), compiled.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4)


def test_mixed_precision_keeps_float32_variables_and_losses():
    """float16 compute, float32 variables and distributions. On the same
    weights the per-image ELBO moves by < 0.2%; after 20 Adam steps the loss is
    within 2% (the loss scaler skips the first steps whose float16 gradients
    overflow, then training follows the float32 run)."""
    full, mixed = build(), build(mixed_precision=True)
    mixed.set_weights(full.get_weights())
    dense = mixed.encoder.body.layers[1]
    assert dense.compute_dtype == "float16" and dense.kernel.dtype == "float32"
    assert type(mixed.optimizer).__name__ == "LossScaleOptimizer"
    rng = np.random.default_rng(2)
    x = (rng.random((64, 28, 28, 1)) < 0.3).astype(np.float32)
    noise = rng.standard_normal((64, 20)).astype(np.float32)
    terms_mixed, terms_full = mixed.elbo_terms(x, noise), full.elbo_terms(x, noise)
    assert all(t.dtype == tf.float32 for t in terms_mixed.values())
    np.testing.assert_allclose(terms_mixed["elbo"], terms_full["elbo"], rtol=2e-3)
    assert fit_steps(mixed, 20) == pytest.approx(fit_steps(full, 20), rel=2e-2)
    assert tf.keras.mixed_precision.global_policy().name == "float32"  # not leaked


def test_replicated_strategies_on_the_cpu_use_plain_steps():
    """Keras' multi-step loop and XLA replica steps fail under Mirrored /
    MultiWorkerMirrored on the CPU: auto turns them off there, and asking for
    them is refused with a clear message rather than a graph error mid-run."""
    from tfvae.errors import RunError

    mirrored = tf.distribute.MirroredStrategy(["/cpu:0"])
    default = tf.distribute.get_strategy()
    default, mirrored = Placement(default, Path("r")), Placement(mirrored, Path("r"))
    assert default.execution(TrainConfig()) == (True, 32)
    assert default.execution(TrainConfig(arch="conv")) == (False, 32)
    assert mirrored.execution(TrainConfig(strategy="mirrored")) == (False, 1)
    with pytest.raises(RunError, match="--jit-compile"):
        mirrored.execution(TrainConfig(strategy="mirrored", jit_compile=True))


def test_auto_on_a_machine_without_gpus_is_the_default_strategy():
    if tf.config.list_logical_devices("GPU"):
        pytest.skip("auto mirrors or places on the GPUs here")
    strategy = make_strategy("auto")
    assert strategy is tf.distribute.get_strategy()
    assert Placement(strategy, Path("r")).describe() == {
        "strategy_class": "_DefaultDistributionStrategy",
        "placement": "one CPU",
        "replicas": 1,
    }


def test_tpu_without_a_tpu_is_one_line_and_writes_nothing(tmp_path):
    if tf.config.list_logical_devices("TPU"):
        pytest.skip("this machine has a TPU")
    run = tmp_path / "run"
    result = invoke("train", "--strategy", "tpu", "--run-dir", str(run))
    assert result.exit_code == 1, result.output
    assert result.output.startswith("Error: --strategy tpu: no TPU found")
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert list(tmp_path.iterdir()) == []  # no run folder, no lock file


def cluster(task_type, task_id, **jobs):
    """A stand-in for a multi-worker strategy: only its cluster resolver's
    task and cluster spec decide where a worker writes."""
    spec = tf.train.ClusterSpec(
        {name: [f"host{i}:1" for i in range(n)] for name, n in jobs.items()}
    )
    resolver = SimpleNamespace(task_type=task_type, task_id=task_id, cluster_spec=lambda: spec)
    return SimpleNamespace(cluster_resolver=resolver)


def test_only_the_chief_writes_the_run_folder_the_others_a_hidden_sibling():
    """Worker 0 is the chief unless the cluster names one; every other task
    writes `.<run>.<type>-<index>` beside the run folder."""
    run = Path("jobs") / "run"

    def place(strategy):
        placement = Placement.of(strategy, run)
        return placement.folder, placement.is_chief

    assert place(tf.distribute.get_strategy()) == (run, True)
    assert place(cluster(None, None, worker=1)) == (run, True)
    assert place(cluster("worker", 0, worker=3)) == (run, True)
    assert place(cluster("worker", 2, worker=3)) == (Path("jobs") / ".run.worker-2", False)
    assert place(cluster("chief", 0, chief=1, worker=2)) == (run, True)
    assert place(cluster("worker", 0, chief=1, worker=2)) == (Path("jobs") / ".run.worker-0", False)


# What a collective op raises when a peer dies or stops answering.
PEER_ERRORS = [
    tf.errors.UnavailableError,
    tf.errors.DeadlineExceededError,
    tf.errors.CancelledError,
    tf.errors.AbortedError,
]


@pytest.mark.parametrize("error", PEER_ERRORS, ids=lambda e: e.__name__)
def test_a_failed_collective_under_multi_worker_is_a_peer_lost_error(error):
    """From the Python API, `train` raises PeerLostError (a RunError, one line
    in the CLI) saying to rerun; the same error without multi-worker, and
    other errors under it, pass through unchanged."""
    # Never initialised (a real one must come before TensorFlow starts): only
    # its type matters here.
    multi_worker = tf.distribute.MultiWorkerMirroredStrategy.__new__(
        tf.distribute.MultiWorkerMirroredStrategy
    )
    with pytest.raises(PeerLostError, match=f"with {error.__name__}.*rerun the same command"):
        with Placement(multi_worker, Path("r")).failures():
            raise error(None, None, "connection reset by peer")
    assert issubclass(PeerLostError, RunError)
    with pytest.raises(error):
        with Placement(tf.distribute.get_strategy(), Path("r")).failures():
            raise error(None, None, "connection reset by peer")
    with pytest.raises(tf.errors.InvalidArgumentError):
        with Placement(multi_worker, Path("r")).failures():
            raise tf.errors.InvalidArgumentError(None, None, "a bug, not a lost peer")
