#!/usr/bin/env bash
# Installs the newest versions that pyproject.toml's ranges allow into a new virtual environment
# and runs the README's lint and tests against them: what the next refresh of constraints.txt will
# meet. With --write, and only when everything passed, constraints.txt then pins what was installed.
# A new release that breaks a test is fixed in the code or the test, never by a looser check.
set -euo pipefail
cd "$(dirname "$0")/.."
write=false
[ "${1:-}" = "--write" ] && write=true
venv="$(mktemp -d)/venv"
trap 'rm -rf "$(dirname "$venv")"' EXIT
python3 -m venv "$venv"
# shellcheck disable=SC1091
source "$venv/bin/activate"
# In an `if`, not bare: under `set -e` a failure before the chain's last `&&` would not stop the script.
if ! { pip install torch==2.13.0 && pip install -e ".[test]" && ruff check . && ruff format --check . && lint-imports && deptry . && python -m pytest; }; then
    echo "the newest versions fail the checks above: constraints.txt left as it is" >&2
    exit 1
fi
if $write; then
    # The local build tag (+cpu) is dropped: the same pin then accepts the CUDA build of that version.
    {
        echo "# Every package version the tests last passed with; refreshed by scripts/refresh_constraints.sh --write."
        pip freeze --exclude-editable | sed -E 's/^(torch==[^+]*)\+.*/\1/'
    } > constraints.txt
    echo "constraints.txt: $(grep -vc '^#' constraints.txt) packages pinned"
fi
