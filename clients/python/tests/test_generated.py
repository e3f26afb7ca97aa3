"""The checked-in conveyor/v1 modules are what generate.sh makes from today's proto files, with
the grpcio-tools requirements-dev.txt pins (another version writes other bytes)."""

import os
import subprocess
import sys
import tempfile
from importlib.metadata import version

HERE = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
PROTO = os.path.abspath(os.path.join(HERE, "..", "..", "proto"))


def pinned(name: str) -> str:
    with open(os.path.join(HERE, "requirements-dev.txt")) as f:
        for line in f:
            if line.startswith(f"{name}=="):
                return line.split("==", 1)[1].strip()
    raise AssertionError(f"requirements-dev.txt pins no {name}")


def test_generated_code_is_current():
    tools = version("grpcio-tools")
    # Else a stale verdict would blame the committed files for the tool's version.
    assert tools == pinned("grpcio-tools"), (
        f"grpcio-tools {tools} is installed; requirements-dev.txt pins "
        f"{pinned('grpcio-tools')}: pip install -r clients/python/requirements-dev.txt")
    with tempfile.TemporaryDirectory() as out:
        files = [os.path.join(PROTO, "conveyor", "v1", f) for f in ("jobs.proto", "workers.proto")]
        subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I", PROTO,
                        f"--python_out={out}", f"--grpc_python_out={out}", f"--pyi_out={out}",
                        *files], check=True)
        for name in sorted(os.listdir(os.path.join(out, "conveyor", "v1"))):
            fresh = open(os.path.join(out, "conveyor", "v1", name)).read()
            kept = open(os.path.join(HERE, "conveyor", "v1", name)).read()
            assert fresh == kept, f"conveyor/v1/{name} is stale: run clients/python/generate.sh"
