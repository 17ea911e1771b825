#!/usr/bin/env bash
# Security scan of terraform/ with checkov, in its own virtualenv.
#
# checkov pins packaging<24 (which breaks google-cloud-bigquery) and installs a `hcl2` module that shadows
# python-hcl2, so it never goes into the project's .venv. The venv lives under .local/venv-checkov and is
# created on first use. Exit status: checkov's own (non-zero when any check fails).
#
#   scripts/checkov.sh            scan terraform/ (compact, quiet)
#   scripts/checkov.sh ARGS...    extra arguments go to checkov (e.g. --output json)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CHECKOV_VERSION="3.3.30"
VENV="${SENDIT_CHECKOV_VENV:-$ROOT/.local/venv-checkov}"
PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"

if [[ ! -x "$VENV/bin/checkov" ]] || ! "$VENV/bin/checkov" --version 2>/dev/null | grep -qx "$CHECKOV_VERSION"; then
  echo "checkov.sh: installing checkov==$CHECKOV_VERSION into $VENV" >&2
  rm -rf "$VENV"
  mkdir -p "$(dirname "$VENV")"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip >&2
  "$VENV/bin/python" -m pip install -q "checkov==$CHECKOV_VERSION" >&2
fi

cd "$ROOT"
# --quiet: list failed checks only; --compact: no code blocks in the report.
# --skip-download: offline, no call to the vendor platform for guidelines or mappings.
export BC_SKIP_MAPPING=TRUE
exec "$VENV/bin/checkov" -d terraform --framework terraform --quiet --compact --skip-download "$@"
