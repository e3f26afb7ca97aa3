#!/bin/sh
# The Python client's tests, against the package as users get it: builds the wheel, installs it
# into a scratch folder, and runs pytest there, so `import conveyor` is the installed wheel and
# not this source tree (tests/test_packaging.py checks). Nothing is left behind.
#
#   PYTHON=target/test-env/python/bin/python3 CONVEYOR_BIN=target/debug/conveyor \
#     clients/python/run-tests.sh [pytest arguments]
#
# PYTHON: the interpreter, with requirements-dev.txt installed (default python3).
# CONVEYOR_BIN: the server the tests start (default: the workspace's target/debug/conveyor).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
python=${PYTHON:-python3}
scratch=$(mktemp -d "${TMPDIR:-/tmp}/conveyor-py-tests.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# A copy to build from: setuptools writes build/ and *.egg-info next to pyproject.toml.
mkdir "$scratch/src"
(cd "$here" && tar -cf - --exclude=__pycache__ --exclude=build --exclude='*.egg-info' \
  --exclude=tests --exclude=.pytest_cache --exclude=.venv .) | (cd "$scratch/src" && tar -xf -)
"$python" -m pip wheel -q --disable-pip-version-check --no-deps --no-build-isolation \
  --wheel-dir "$scratch/dist" "$scratch/src"
"$python" -m pip install -q --disable-pip-version-check --no-deps --no-index \
  --target "$scratch/site" "$scratch"/dist/*.whl

# From the scratch folder: `python -m` puts the working directory first on sys.path.
# No bytecode, and pytest's tmp_path under the scratch folder: the run leaves nothing behind.
cd "$scratch"
PYTHONPATH="$scratch/site" CONVEYOR_WHEEL=$(echo "$scratch"/dist/*.whl) PYTHONDONTWRITEBYTECODE=1 \
  "$python" -m pytest -q -p no:cacheprovider --rootdir "$here" --basetemp "$scratch/tmp" \
  "$here/tests" "$@"
