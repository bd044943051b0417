"""What `pip install tfvae` puts on a machine: one package, its command, its data."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

from harness import TFVAE

import tfvae

ROOT = Path(__file__).resolve().parents[1]


def test_the_wheel_installs_only_the_tfvae_package(tmp_path):
    """`cli/` of the repository is installed as `tfvae.cli`, so no top-level
    `cli` package lands in site-packages to clash with another distribution's."""
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    (wheel,) = tmp_path.glob("tfvae-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {name.split("/")[0] for name in names} == {
        "tfvae",
        f"tfvae-{tfvae.__version__}.dist-info",
    }
    for needed in (
        "tfvae/cli/main.py",
        "tfvae/data/pipelines.py",
        "tfvae/export/files.py",
        "tfvae/py.typed",
        "tfvae/resources/mnist/SHA256SUMS",
        "tfvae/resources/mnist/train-images-idx3-ubyte.gz",
        "tfvae/resources/mnist/README.md",
    ):
        assert needed in names, needed
    dist_info = f"tfvae-{tfvae.__version__}.dist-info"
    assert f"{dist_info}/licenses/LICENSE" in names
    entry_points = zipfile.ZipFile(wheel).read(f"{dist_info}/entry_points.txt").decode()
    assert re.search(r"^tfvae = tfvae\.cli\.main:main$", entry_points, re.MULTILINE)


def test_python_dash_m_tfvae_is_the_command():
    result = subprocess.run([*TFVAE, "--version"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"tfvae, version {tfvae.__version__}"


def test_the_version_is_said_once():
    """pyproject.toml takes the version from `tfvae.__version__`."""
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in pyproject
    assert 'version = {attr = "tfvae.__version__"}' in pyproject
    assert not re.search(r'^version = "', pyproject, re.MULTILINE)
