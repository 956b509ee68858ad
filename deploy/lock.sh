#!/usr/bin/env bash
# Regenerate deploy/requirements.lock: the engine's RUNTIME dependencies (no dev extra), pinned
# to exactly the versions installed in .venv (the ones the test suite ran against), with the
# sha256 hashes PyPI publishes for them, so the image installs with `pip --require-hashes`.
#
#   bash deploy/lock.sh            # after changing dependencies in pyproject.toml and `make test`
#
# Needs network access to PyPI (pip-compile looks the hashes up). pip-tools runs from a
# throw-away virtualenv, so it never touches .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv
[ -x "$venv/bin/python" ] || { echo "no $venv: run 'make test' (or 'make lint') first" >&2; exit 2; }
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$venv/bin/python" -m pip freeze --exclude-editable > "$work/venv-freeze.txt"
"$venv/bin/python" -m venv "$work/tools"
"$work/tools/bin/python" -m pip install --quiet pip-tools
# --constraint pins every package to the .venv version; pyproject.toml without extras gives the
# runtime closure only; index and find-links lines of the local pip configuration are left out.
CUSTOM_COMPILE_COMMAND="bash deploy/lock.sh" "$work/tools/bin/pip-compile" --quiet --generate-hashes --strip-extras --allow-unsafe \
    --no-emit-index-url --no-emit-trusted-host --no-emit-find-links \
    --constraint "$work/venv-freeze.txt" \
    --output-file deploy/requirements.lock pyproject.toml
# the constraints file lives in a temporary folder: name it the same way in every run
sed -i "s#-c $work/venv-freeze.txt#-c pip freeze of .venv#" deploy/requirements.lock
echo "deploy/requirements.lock: $(grep -c '==' deploy/requirements.lock) pinned packages"
