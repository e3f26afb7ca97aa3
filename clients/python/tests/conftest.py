"""A real Conveyor for the tests: `conveyor dev` (its private Redis, SQLite history and
S3-compatible store) on a free port, one per test session. CONVEYOR_BIN names the binary
(default: the workspace's target/debug/conveyor).

`conveyor` is imported as installed, not from this source tree: run-tests.sh builds the wheel,
installs it into a scratch folder and names that folder in PYTHONPATH (and the wheel in
CONVEYOR_WHEEL)."""

import os
import shutil
import socket
import subprocess
import tempfile
import time

import grpc
import pytest

from conveyor.v1 import jobs_pb2, jobs_pb2_grpc

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def server():
    binary = os.environ.get("CONVEYOR_BIN", os.path.join(ROOT, "target", "debug", "conveyor"))
    port = free_port()
    data = tempfile.mkdtemp(prefix="conveyor-py-")
    env = {k: v for k, v in os.environ.items()
           if k not in ("REDIS_URL", "DATABASE_URL", "CONVEYOR_S3_BUCKET", "CONVEYOR_KEY")}
    env["CONVEYOR_DATA_DIR"] = data
    process = subprocess.Popen([binary, "dev", "--listen", f"127.0.0.1:{port}"], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    address = f"127.0.0.1:{port}"
    deadline = time.time() + 30
    while True:
        try:
            with grpc.insecure_channel(address) as chan:
                jobs_pb2_grpc.JobServiceStub(chan).ListQueues(
                    jobs_pb2.ListQueuesRequest(), timeout=1)
            break
        except grpc.RpcError:
            if time.time() > deadline or process.poll() is not None:
                process.kill()
                process.wait()
                shutil.rmtree(data, ignore_errors=True)
                raise RuntimeError(f"{binary} dev did not answer on {address}")
            time.sleep(0.1)
    yield address
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    shutil.rmtree(data, ignore_errors=True)
