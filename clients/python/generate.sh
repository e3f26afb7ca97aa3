#!/bin/sh
# Regenerates conveyor/v1 from ../../proto with grpcio-tools (pip install grpcio-tools).
set -e
cd "$(dirname "$0")"
python3 -m grpc_tools.protoc -I ../../proto \
  --python_out=. --grpc_python_out=. --pyi_out=. \
  ../../proto/conveyor/v1/jobs.proto ../../proto/conveyor/v1/workers.proto
touch conveyor/v1/__init__.py
