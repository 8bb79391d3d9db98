"""The strict-skip mechanism of tests/conftest.py: under IMGRAG_STRICT_SKIPS=1 (set by .ci/run) every
skip fails the run unless ALLOWED_SKIPS lists it; without the variable skips are plain skips.

Each case runs pytest in a subprocess on a small project holding a copy of the real tests/conftest.py.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from waiting import wait_until

CONFTEST = Path(__file__).with_name("conftest.py")

CASES = {
    "test_plain.py": """
        import pytest

        def test_plain_skip():
            pytest.skip("needs the frobnicator")

        def test_passes():
            pass
    """,
    "test_marker.py": """
        import pytest

        @pytest.mark.skipif(True, reason="frobnicator not installed")
        def test_skipif():
            pass
    """,
    "test_module_level.py": """
        import pytest

        pytest.importorskip("imgrag_no_such_module_xyz")

        def test_never_collected():
            pass
    """,
    "test_ok.py": """
        def test_ok():
            pass
    """,
    "test_inside.py": """
        import pytest

        def test_needs_the_module():
            pytest.importorskip("imgrag_no_such_module_xyz")

        @pytest.mark.xfail(reason="a known bug, not a skip", strict=True)
        def test_xfail():
            assert False
    """,
    # the name and reason of the one allow-listed skip (root without CAP_SETPCAP)
    "test_bad_input.py": """
        import pytest

        def test_unreadable_files_and_folders():
            pytest.skip("running as root without CAP_SETPCAP (CapEff=0): cannot drop CAP_DAC_OVERRIDE")

        def test_same_reason_elsewhere():
            pytest.skip("running as root without CAP_SETPCAP (CapEff=0): cannot drop CAP_DAC_OVERRIDE")
    """,
}


def run_pytest(root: Path, files: list[str], strict: str | None) -> subprocess.CompletedProcess:
    tests = root / "tests"
    tests.mkdir(parents=True, exist_ok=True)
    (root / "pytest.ini").write_text("[pytest]\n")  # rootdir here: ids are tests/<file>::<name>, as in the repo
    (tests / "conftest.py").write_text(CONFTEST.read_text())
    for name in files:
        (tests / name).write_text(textwrap.dedent(CASES[name]))
    env = {k: v for k, v in os.environ.items() if k != "IMGRAG_STRICT_SKIPS" and not k.startswith("PYTEST_")}
    if strict is not None:
        env["IMGRAG_STRICT_SKIPS"] = strict
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rA", *[f"tests/{f}" for f in files]],
                          cwd=root, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("name", ["test_plain.py", "test_marker.py", "test_inside.py"])
def test_a_skip_passes_without_the_variable_and_fails_with_it(tmp_path, name):
    plain = run_pytest(tmp_path / "plain", [name], None)
    assert plain.returncode == 0, plain.stdout[-3000:]
    assert " skipped" in plain.stdout and not re.search(r"\d failed", plain.stdout.splitlines()[-1]), plain.stdout[-3000:]
    off = run_pytest(tmp_path / "off", [name], "0")
    assert off.returncode == 0, off.stdout[-3000:]
    strict = run_pytest(tmp_path / "strict", [name], "1")
    assert strict.returncode == 1, strict.stdout[-3000:]
    out = strict.stdout
    assert "IMGRAG_STRICT_SKIPS=1 (CI) turns skips into failures" in out and "ALLOWED_SKIPS" in out, out[-3000:]
    assert " skipped" not in out.splitlines()[-1], out[-3000:]
    if name == "test_plain.py":
        assert "(needs the frobnicator)" in out and "1 failed, 1 passed" in out.splitlines()[-1], out[-3000:]
    if name == "test_inside.py":  # an xfail is not a skip: still reported as xfailed
        assert "1 xfailed" in out.splitlines()[-1], out[-3000:]


def test_a_module_level_importorskip_is_a_collection_error_when_strict(tmp_path):
    plain = run_pytest(tmp_path / "plain", ["test_module_level.py", "test_ok.py"], None)
    assert plain.returncode == 0 and "1 passed, 1 skipped" in plain.stdout, plain.stdout[-3000:]
    strict = run_pytest(tmp_path / "strict", ["test_module_level.py", "test_ok.py"], "1")
    assert strict.returncode != 0, strict.stdout[-3000:]
    assert "ERROR collecting" in strict.stdout and "imgrag_no_such_module_xyz" in strict.stdout, strict.stdout[-3000:]


def test_only_the_allow_listed_skip_is_kept(tmp_path):
    strict = run_pytest(tmp_path, ["test_bad_input.py"], "1")
    last = strict.stdout.splitlines()[-1]
    assert strict.returncode == 1 and "1 failed" in last and "1 skipped" in last, strict.stdout[-3000:]
    assert "FAILED tests/test_bad_input.py::test_same_reason_elsewhere" in strict.stdout
    assert "SKIPPED" in strict.stdout and "test_unreadable_files_and_folders" not in strict.stdout.split("FAILED")[-1]


def test_wait_until_returns_the_value_or_fails_naming_what_it_waited_for():
    calls = []
    assert wait_until(lambda: calls.append(1) or (len(calls) >= 3 and "ready"), 30, "three calls") == "ready"
    with pytest.raises(AssertionError, match=r"timed out after 0.05s waiting for the kettle to boil"):
        wait_until(lambda: False, 0.05, "the kettle to boil")
