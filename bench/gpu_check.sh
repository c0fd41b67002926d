#!/usr/bin/env bash
# Every GPU figure of the project in one run, as one markdown table (bench/gpu_check.md by default).
#   bench/gpu_check.sh [--out PATH] [--dry-run] [--only PART ...] [--keep]
# The work is done by bench/gpu_check.py (see its docstring); this wrapper only picks the interpreter:
# $PYTHON if set, else the repository's .venv, else python3 on PATH.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$repo/.venv/bin/python" ]]; then PYTHON="$repo/.venv/bin/python"; else PYTHON=python3; fi
fi
exec "$PYTHON" "$repo/bench/gpu_check.py" "$@"
