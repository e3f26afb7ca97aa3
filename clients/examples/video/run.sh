#!/bin/sh
# The video pipeline in one command: a private `conveyor dev` (Redis, SQLite, S3-compatible
# store), the Python render worker, and the backend that submits and watches one weather video.
# Needs `cargo build` and `python3 -m pip install -r clients/python/requirements-dev.txt`.
set -e
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../.." && pwd)
bin=${CONVEYOR_BIN:-$root/target/debug/conveyor}
data=$(mktemp -d)
port=${PORT:-50061}
export CONVEYOR_ADDR=127.0.0.1:$port
CONVEYOR_DATA_DIR=$data "$bin" dev --listen "127.0.0.1:$port" >"$data/server.log" 2>&1 &
server=$!
worker=
trap 'kill $worker $server 2>/dev/null; wait 2>/dev/null; rm -rf "$data"' EXIT
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
