#!/bin/sh
# Regenerates conveyor/v1 from ../../proto with grpcio-tools at the version requirements-dev.txt
# pins (another version writes other bytes; tests/test_generated.py compares). PYTHON names the
# interpreter (default python3), e.g. target/test-env/python/bin/python3 from tests/run.
set -e
cd "$(dirname "$0")"
python=${PYTHON:-python3}
pinned=$(sed -n 's/^grpcio-tools==//p' requirements-dev.txt)
have=$("$python" -c 'from importlib.metadata import version; print(version("grpcio-tools"))' 2>/dev/null || true)
if [ "$have" != "$pinned" ]; then
  echo "generate.sh: needs grpcio-tools==$pinned (found: ${have:-none});" \
    "run: $python -m pip install -r requirements-dev.txt" >&2
  exit 1
fi
"$python" -m grpc_tools.protoc -I ../../proto \
  --python_out=. --grpc_python_out=. --pyi_out=. \
  ../../proto/conveyor/v1/jobs.proto ../../proto/conveyor/v1/workers.proto
touch conveyor/v1/__init__.py
