"""The package as users get it: the wheel run-tests.sh built (CONVEYOR_WHEEL) and installed for
these tests, its metadata and files, and dependency floors that import the generated code."""

import json
import os
import re
import subprocess
import sys
import zipfile
from email.parser import Parser

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

import conveyor

HERE = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


@pytest.fixture(scope="session")
def wheel() -> str:
    path = os.environ.get("CONVEYOR_WHEEL")
    if not path:
        pytest.fail("CONVEYOR_WHEEL is not set: run the tests with clients/python/run-tests.sh")
    return path


def metadata(wheel: str):
    with zipfile.ZipFile(wheel) as z:
        name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        return Parser().parsestr(z.read(name).decode())


def requirements(wheel: str) -> dict:
    """Requires-Dist of the wheel for a plain install (no extras), by name."""
    found = {}
    for line in metadata(wheel).get_all("Requires-Dist") or []:
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            found[req.name] = req
    return found


def lowest(req: Requirement) -> str:
    """The lowest version `req` allows: its greatest lower bound (>=, ==, ~=)."""
    floors = [Version(s.version) for s in req.specifier if s.operator in (">=", "==", "~=")]
    assert floors, f"{req} states no lower bound"
    floor = max(floors)
    assert req.specifier.contains(floor), f"{req} excludes its own floor {floor}"
    return str(floor)


def generated(name: str) -> str:
    with open(os.path.join(HERE, "conveyor", "v1", name)) as f:
        return f.read()


def test_conveyor_is_imported_from_the_installed_wheel():
    source = os.path.join(HERE, "conveyor") + os.sep
    assert not os.path.realpath(conveyor.__file__).startswith(source), (
        f"{conveyor.__file__} is the source tree: run clients/python/run-tests.sh")


def test_dev_requirements_are_exact_versions():
    with open(os.path.join(HERE, "requirements-dev.txt")) as f:
        lines = [line.split("#")[0].strip() for line in f]
    loose = [line for line in lines
             if line and not re.fullmatch(r"[A-Za-z0-9._-]+==[0-9][\w.]*", line)]
    assert not loose, f"requirements-dev.txt must pin exact versions: {loose}"


def test_dependency_floors_are_what_the_generated_code_checks(wheel):
    reqs = requirements(wheel)
    # The gencode refuses an older protobuf runtime, and a newer major one.
    gencodes = {re.search(r"^# Protobuf Python Version: (\S+)$", generated(name), re.M)[1]
                for name in ("jobs_pb2.py", "workers_pb2.py")}
    assert len(gencodes) == 1, gencodes
    gencode = gencodes.pop()
    assert lowest(reqs["protobuf"]) == gencode, reqs["protobuf"]
    next_major = f"{Version(gencode).major + 1}.0.0"
    assert not reqs["protobuf"].specifier.contains(next_major), reqs["protobuf"]
    # The service modules refuse a grpcio older than the grpcio-tools that wrote them.
    for name in ("jobs_pb2_grpc.py", "workers_pb2_grpc.py"):
        stamp = re.search(r"^GRPC_GENERATED_VERSION = '(.+)'$", generated(name), re.M)[1]
        assert lowest(reqs["grpcio"]) == stamp, (name, reqs["grpcio"])


def test_the_lowest_allowed_versions_import_the_generated_code(wheel, tmp_path):
    floors = {name: lowest(req) for name, req in requirements(wheel).items()}
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / ("Scripts" if os.name == "nt" else "bin") / "python")
    # Nothing of this run's own: its PYTHONPATH holds the wheel installed for the other tests.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    pins = [f"{name}=={version}" for name, version in sorted(floors.items())]
    subprocess.run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check", wheel,
                    *pins], check=True, env=env, cwd=tmp_path)
    check = ("import json, sys; from importlib.metadata import version; import conveyor, "
             "conveyor.v1.jobs_pb2_grpc, conveyor.v1.workers_pb2_grpc; "
             "print(json.dumps({n: version(n) for n in sys.argv[1:]}))")
    run = subprocess.run([python, "-c", check, *floors], env=env, cwd=tmp_path,
                         capture_output=True, text=True)
    assert run.returncode == 0, f"with {pins}:\n{run.stderr}"
    assert json.loads(run.stdout) == floors


def test_the_wheel_carries_what_pypi_users_expect(wheel):
    meta = metadata(wheel)
    stated = meta.get("License-Expression") or meta.get("License") or ""
    assert stated == "Apache-2.0", meta.items()
    urls = dict(u.split(", ", 1) for u in meta.get_all("Project-URL") or [])
    assert urls.get("Repository") == "https://github.com/conveyor-dev/conveyor", urls
    assert "Documentation" in urls, urls
    assert meta.get("Requires-Python"), meta.items()
    assert meta.get("Description-Content-Type") == "text/markdown"
    assert "pip install conveyor-client" in meta.get_payload()  # the README is the description
    assert "Typing :: Typed" in (meta.get_all("Classifier") or [])
    with zipfile.ZipFile(wheel) as z:
        files = z.namelist()
    assert "conveyor/py.typed" in files, files
    assert {"conveyor/v1/jobs_pb2.pyi", "conveyor/v1/workers_pb2.pyi"} <= set(files), files
    strays = [f for f in files
              if f.startswith("tests/") or "__pycache__" in f or f.endswith(".pyc")]
    assert not strays, strays
