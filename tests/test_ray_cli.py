"""The single-machine path needs no Ray; ``--engine ray`` without it says what to install."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
from PIL import Image

MODEL = "imgrag-tiny-clip"

# Make ray unimportable in the child, as on a machine without the `distributed` extra.
BLOCK = "import sys; sys.modules['ray'] = None\n"


def run_cli(*argv: str) -> subprocess.CompletedProcess:
    code = BLOCK + textwrap.dedent(f"""
        from imgrag.app.cli import main
        rc = main({list(argv)!r})
        assert 'ray' not in [m for m in sys.modules if sys.modules[m] is not None], 'ray was imported'
        sys.exit(rc)
    """)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ),
                          timeout=300)


def test_local_engine_works_without_ray_and_ray_engine_names_the_extra(tmp_path, tiny_model_configs):
    coll = tmp_path / "photos"
    coll.mkdir()
    for i in range(3):
        Image.fromarray(np.full((20, 20, 3), 60 * i, np.uint8)).save(coll / f"{i}.png")
    idx = tmp_path / "idx"
    r = run_cli("index", str(coll), "--index", str(idx), "--model", MODEL, "--workers", "0")
    assert r.returncode == 0, r.stderr
    assert "3 new/changed images" in r.stdout

    r = run_cli("index", str(coll), "--index", str(idx), "--engine", "ray")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "imgrag: error: --engine ray needs Ray Data and pylance (ray is missing): pip install 'imgrag[distributed]'"]

    r = run_cli("index", "s3://bucket/photos", "--index", str(idx))
    assert r.returncode == 2 and "need --engine ray" in r.stderr
    r = run_cli("index", str(coll), "--index", str(idx), "--ray-actors", "2")
    assert r.returncode == 2 and "--ray-actors need --engine ray" in r.stderr
