"""`tfvae export --format web` in a real browser: headless Chromium (Debian's
`chromium`) runs the page with LiteRT.js from npm (`tests/browser/`, installed
by `.ci/run`), and its decoder is compared with the SavedModel's.

Without Chromium or LiteRT.js the browser tests are skipped, except under CI
(`CI=true`), where a missing install must fail the run instead."""

import json
import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pytest
from chromium import Browser, Server, find_chromium
from harness import FINISHED_RUN_0_1_0
from PIL import Image

from tfvae.export import export_savedmodel
from tfvae.export.web import LITERT_JS_VERSION, export_web, import_map
from tfvae.runs import load_run

HERE = Path(__file__).parent
LITERT_JS = HERE / "browser" / "node_modules" / "@litertjs"
ASSETS = HERE.parent / "tfvae" / "resources" / "web"


def _needs_browser() -> None:
    missing = []
    try:
        find_chromium()
    except FileNotFoundError as err:
        missing.append(str(err))
    if not (LITERT_JS / "core" / "dist" / "index.js").is_file():
        missing.append(f"no LiteRT.js in {LITERT_JS}: npm ci --prefix tests/browser")
    if missing and os.environ.get("CI") == "true":
        pytest.fail("; ".join(missing))
    if missing:
        pytest.skip("; ".join(missing))


@pytest.fixture(scope="module")
def mnist_images(mnist):
    return mnist.fixed_binarized("test", "dynamic")[:256]


def _served_page(tmp_path, model, images, name):
    """Export `model` as a web page that loads LiteRT.js from `./litertjs`,
    linked to the npm packages, as `--litert-js ./litertjs` does."""
    folder = export_web(model, tmp_path, name, check_images=images, litert_js="./litertjs")
    (folder / "litertjs").symlink_to(LITERT_JS.resolve())
    return folder


def _open(browser, server):
    page = browser.new_page()
    page.goto(server.url + "index.html")
    page.evaluate(
        "window.tfvaeReady ? tfvaeReady.then(() => 1)"
        " : Promise.reject(new Error('app.js did not run'))",
        timeout=120,
    )
    return page


@pytest.fixture(scope="module")
def trained_page(tmp_path_factory, mnist_images):
    """The committed 250-epoch model (latent 20) as a page, open in Chromium,
    and the SavedModel export of the same model."""
    _needs_browser()
    tmp = tmp_path_factory.mktemp("web")
    model = load_run(FINISHED_RUN_0_1_0).model
    folder = _served_page(tmp, model, mnist_images, "mnist")
    savedmodel = export_savedmodel(model, tmp, "mnist")
    with Server(folder) as server, Browser() as browser:
        yield _open(browser, server), folder, savedmodel


def test_the_page_decodes_as_the_savedmodel_does(trained_page):
    """`tfvaeDecode` (a batch-16 run and batch-1 runs for 19 codes) against the
    SavedModel's `decode` signature; `tfvaeEncode` against its `encode`."""
    import tensorflow as tf

    page, folder, savedmodel = trained_page
    serving = tf.saved_model.load(str(savedmodel)).signatures
    z = np.random.default_rng(0).standard_normal((19, 20)).astype(np.float32)
    got = np.array(page.evaluate(f"tfvaeDecode({json.dumps(z.tolist())})"), np.float32)
    want = serving["decode"](z=tf.constant(z))["probabilities"].numpy().reshape(19, -1)
    assert np.abs(got - want).mean() < 1e-5 and np.abs(got - want).max() < 1e-4
    examples = np.array(json.loads((folder / "examples.json").read_text())["images"], np.float32)
    got = np.array(page.evaluate(f"tfvaeEncode({json.dumps(examples[:3].tolist())})"))
    want = serving["encode"](images=tf.constant(examples[:3].reshape(3, 28, 28, 1)))["z_mean"]
    assert np.abs(got - want.numpy()).max() < 1e-4
    assert page.evaluate("tfvaeDecode([])") == []


def test_the_page_refuses_bad_codes(trained_page):
    page = trained_page[0]
    said = page.evaluate("tfvaeDecode([[1, 2]]).then(() => 'ok', e => `${e.name}: ${e.message}`)")
    assert said == "TypeError: code 0 must be an array of 20 numbers"
    said = page.evaluate("tfvaeDecode([Array(20).fill(NaN)]).then(() => 'ok', e => e.name)")
    assert said == "RangeError"


def test_the_page_shows_sliders_samples_and_reconstructions_without_errors(trained_page):
    """Five sliders for the most active units; moving one redraws the
    decoded image; the sample grid and the reconstructions are drawn; no
    exception, console error or failed request."""
    page, folder, _ = trained_page
    info = json.loads((folder / "model.json").read_text())
    units = page.evaluate(
        "Array.from(document.querySelectorAll('input[type=range]'), s => +s.dataset.unit)"
    )
    assert units == info["explore"]["units"] and len(units) == 5
    pixels = (
        "Array.from(document.getElementById('decoded').getContext('2d')"
        ".getImageData(0, 0, 32, 32).data)"
    )
    before = page.evaluate(pixels)
    page.evaluate(
        "(() => { const s = document.querySelector('input[type=range]'); s.value = 2.5;"
        " s.dispatchEvent(new Event('input')); return new Promise(r => setTimeout(r, 300)); })()"
    )
    assert page.evaluate(pixels) != before
    sizes = page.evaluate(
        "['samples', 'reconstructions'].map(id => document.getElementById(id).width)"
    )
    assert sizes == [4 * 30 + 2, 8 * 30 + 2]
    assert page.evaluate("document.body.dataset.state") == "ready"
    assert page.errors == []


@pytest.mark.slow
def test_a_2d_model_gets_a_manifold_to_drag_over(tmp_path, mnist_images):
    """Moving the point to (u, v) of the manifold decodes z = (Phi^-1(u),
    Phi^-1(1 - v)), the manifold's own axes; a screenshot shows the page."""
    import tensorflow as tf

    from tfvae.config import TrainConfig
    from tfvae.training import train

    _needs_browser()
    config = TrainConfig(latent_dim=2, hidden_units=(64,), limit=2000, epochs=3)
    model = train(config, tmp_path / "run", echo=lambda _: None, verbose=0).model
    folder = _served_page(tmp_path, model, mnist_images, "mnist-2d")
    with Server(folder) as server, Browser() as browser:
        page = _open(browser, server)
        assert page.evaluate("!!document.getElementById('manifold')")
        page.evaluate("tfvaeMoveTo(0.2, 0.3)")
        shown = page.evaluate("document.getElementById('code').textContent")
        z = np.array([[NormalDist().inv_cdf(0.2), NormalDist().inv_cdf(0.7)]], np.float32)
        assert shown == f"z = ({z[0, 0]:.2f}, {z[0, 1]:.2f})"
        got = np.array(page.evaluate(f"tfvaeDecode({json.dumps(z.tolist())})"))
        want = tf.sigmoid(model.decoder.outputs(tf.constant(z))).numpy().reshape(1, -1)
        assert np.abs(got - want).max() < 1e-5
        (tmp_path / "page.png").write_bytes(page.screenshot())
        assert page.errors == []
    shot = np.asarray(Image.open(tmp_path / "page.png").convert("L"))
    assert len(np.unique(shot)) > 50  # the manifold's grey levels, not a blank page


def test_a_page_opened_from_a_file_says_to_serve_it(trained_page):
    """Browsers load no ES module or WASM from file://: the page says how to serve it."""
    _, folder, _ = trained_page
    with Browser() as browser:
        page = browser.new_page()
        page.goto((folder / "index.html").as_uri())
        assert page.evaluate("document.body.dataset.state") == "error"
        assert "python -m http.server" in page.evaluate(
            "document.getElementById('status').textContent"
        )


def test_the_page_parses_and_its_import_map_points_at_litert_js():
    """The script parses (node --check) and the page's import map is JSON
    naming both packages, at the tested version on the CDN by default."""
    if shutil.which("node"):
        subprocess.run(["node", "--check", str(ASSETS / "app.js")], check=True)

    class Scripts(HTMLParser):
        maps: list[str] = []
        inside = False

        def handle_starttag(self, tag, attrs):
            self.inside = tag == "script" and ("type", "importmap") in attrs

        def handle_data(self, data):
            if self.inside:
                self.maps.append(data)

    page = (ASSETS / "index.html").read_text()
    parser = Scripts()
    parser.feed(page.replace("{{import_map}}", json.dumps(import_map())).replace("{{name}}", "x"))
    imports = json.loads(parser.maps[0])["imports"]
    assert imports["@litertjs/core"].endswith(f"/core@{LITERT_JS_VERSION}/dist/index.js")
    assert imports["@litertjs/wasm-utils"].endswith(
        f"/wasm-utils@{LITERT_JS_VERSION}/dist/index.js"
    )
    assert import_map("/base/")["imports"]["@litertjs/core"] == "/base/core/dist/index.js"
    package = json.loads((HERE / "browser" / "package.json").read_text())
    assert set(package["dependencies"].values()) == {LITERT_JS_VERSION}


def test_static_batch_files_have_that_shape_and_the_dynamic_files_outputs(tmp_path, mnist_images):
    """`batch=3`: every input and output of both files has batch 3 (in the
    file and in the manifest), and on the same images the files give what
    the dynamic ones give; another batch size fails."""
    from ai_edge_litert.interpreter import Interpreter

    from tfvae.export import export_tflite

    model = load_run(FINISHED_RUN_0_1_0).model
    static = export_tflite(model, tmp_path, "static", check_images=mnist_images, batch=3)
    dynamic = export_tflite(model, tmp_path, "dynamic", check_images=mnist_images)
    manifest = json.loads((static / "manifest.json").read_text())
    assert manifest["batch"] == 3 and "LiteRT.js" in manifest["runtimes"]
    for part in manifest["files"].values():
        assert all(t["shape"][0] == 3 for t in part["inputs"] + part["outputs"])
    x = mnist_images[:3]
    outputs = []
    for folder in (static, dynamic):
        runner = Interpreter(model_path=str(folder / "encoder.tflite")).get_signature_runner(
            "encode"
        )
        outputs.append(runner(images=x)["z_mean"])
    np.testing.assert_array_equal(*outputs)
    runner = Interpreter(model_path=str(static / "decoder.tflite")).get_signature_runner("decode")
    with pytest.raises(RuntimeError, match="failed to prepare"):
        runner(z=outputs[0][:2])  # not the file's batch


def test_a_colour_model_is_shown_in_colour(tmp_path):
    """8x8 RGB images: the page decodes as Keras does, three numbers a pixel,
    and paints the sample grid in colour (red, green and blue differ)."""
    import tensorflow as tf

    from tfvae.config import ModelConfig
    from tfvae.model import VAE

    _needs_browser()
    model = VAE((8, 8, 3), ModelConfig(latent_dim=3, hidden_units=(16,)), seed=0)
    images = np.random.default_rng(0).random((16, 8, 8, 3)).astype(np.float32)
    folder = _served_page(tmp_path, model, images, "colour")
    with Server(folder) as server, Browser() as browser:
        page = _open(browser, server)
        z = np.random.default_rng(1).standard_normal((4, 3)).astype(np.float32)
        got = np.array(page.evaluate(f"tfvaeDecode({json.dumps(z.tolist())})"))
        want = tf.sigmoid(model.decoder.outputs(tf.constant(z))).numpy().reshape(4, 8 * 8 * 3)
        assert np.abs(got - want).max() < 1e-5
        rgba = np.array(
            page.evaluate(
                "(() => { const c = document.getElementById('samples');"
                " const data = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
                " return Array.from(data); })()"
            )
        ).reshape(-1, 4)
        assert (rgba[:, 0] != rgba[:, 1]).mean() > 0.1
        assert page.errors == []


def test_web_refuses_tflite_only_options():
    from tfvae.errors import ExportError
    from tfvae.export import export_run

    for options, named in ((dict(quantize="int8"), "--quantize"), (dict(batch=4), "--batch")):
        with pytest.raises(ExportError, match=f"{named}.* shapes TFLite files and the web page"):
            export_run(FINISHED_RUN_0_1_0, "web", "unused", **options)


def test_grids_show_grey_images_dark_on_white_and_colour_images_in_their_colours():
    """The PNG grids (and the page, which paints as they do): a grey pixel of
    mean 0.2 is drawn 204, a colour pixel (0.2, 0.6, 1.0) as (51, 153, 255)."""
    from tfvae.plots import image_grid

    grey = np.asarray(image_grid(np.full((1, 2, 2, 1), 0.2, np.float32), 1, scale=1, gap=0))
    assert (grey == 204).all()
    colour = np.broadcast_to(np.float32([0.2, 0.6, 1.0]), (1, 2, 2, 3))
    drawn = np.asarray(image_grid(colour, 1, scale=1, gap=0))
    assert (drawn == [51, 153, 255]).all()
