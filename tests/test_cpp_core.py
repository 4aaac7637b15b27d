"""The pybind-free C++ core, built by CMake and run by CTest on its own (no Python in the binary)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _cmake() -> str:
    found = shutil.which("cmake")
    if found is None:
        pytest.skip("cmake is not installed (pip install '.[test]' brings it)")
    return found


def test_core_builds_and_passes_ctest(tmp_path_factory):
    cmake = _cmake()
    build = Path(os.environ.get("MPO_CPP_BUILD_DIR", tmp_path_factory.mktemp("cpp-build")))
    configure = [cmake, "-S", str(ROOT), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
                 f"-DPython_EXECUTABLE={sys.executable}", "-DMPO_BUILD_TESTS=ON"]
    if shutil.which("ninja"):
        configure += ["-G", "Ninja"]
    subprocess.run(configure, check=True, capture_output=True, text=True)
    subprocess.run([cmake, "--build", str(build), "--target", "test_core"], check=True,
                   capture_output=True, text=True)
    ctest = Path(cmake).with_name("ctest")
    result = subprocess.run([str(ctest) if ctest.exists() else "ctest", "--test-dir", str(build),
                             "--output-on-failure"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "100% tests passed" in result.stdout
