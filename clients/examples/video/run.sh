#!/bin/sh
# The video pipeline in one command: a private `conveyor dev` (Redis, SQLite, S3-compatible
# store), the Python render worker, and the backend that submits and watches one weather video.
# Needs `cargo build` and `python3 -m pip install -r clients/python/requirements-dev.txt`; the
# package itself (clients/python) is built and installed into the scratch folder, as a user
# would have it.
set -e
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../.." && pwd)
bin=${CONVEYOR_BIN:-$root/target/debug/conveyor}
data=$(mktemp -d)
port=${PORT:-50061}
export CONVEYOR_ADDR=127.0.0.1:$port
server=
worker=
trap 'kill $worker $server 2>/dev/null; wait 2>/dev/null; rm -rf "$data"' EXIT
# Built from a copy: setuptools writes build/ and *.egg-info next to pyproject.toml.
mkdir "$data/src"
(cd "$root/clients/python" && tar -cf - --exclude=__pycache__ --exclude=build \
  --exclude='*.egg-info' --exclude=tests --exclude=.venv .) | (cd "$data/src" && tar -xf -)
python3 -m pip wheel -q --disable-pip-version-check --no-deps --no-build-isolation \
  --wheel-dir "$data/dist" "$data/src"
python3 -m pip install -q --disable-pip-version-check --no-deps --no-index \
  --target "$data/site" "$data"/dist/*.whl
export PYTHONPATH="$data/site"
CONVEYOR_DATA_DIR=$data "$bin" dev --listen "127.0.0.1:$port" >"$data/server.log" 2>&1 &
server=$!
# Until the server answers.
python3 -c "import grpc; grpc.channel_ready_future(grpc.insecure_channel('$CONVEYOR_ADDR')).result(timeout=30)"
python3 "$here/worker.py" >"$data/worker.log" 2>&1 &
worker=$!
python3 "$here/backend.py"
# In a terminal, keep the server up so the page can be looked at, until Enter.
if [ -t 0 ]; then
  printf 'the dashboard: http://%s/dashboard/ (Enter stops the server)\n' "$CONVEYOR_ADDR"
  read -r _
fi
