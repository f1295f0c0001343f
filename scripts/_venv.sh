# Shared by scripts/demo and scripts/test: create or reuse .venv and install the project into it.
# Usage: source scripts/_venv.sh [extras]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "capsync: creating $VENV" >&2
  "$PY" -m venv "$VENV"
fi
EXTRAS="${1:-}"
SPEC="$ROOT"
[ -n "$EXTRAS" ] && SPEC="$ROOT[$EXTRAS]"
STAMP="$VENV/.capsync-installed-$EXTRAS"
# Reinstall only when pyproject.toml changed since the last install: keeps reruns fast.
if [ ! -f "$STAMP" ] || [ "$ROOT/pyproject.toml" -nt "$STAMP" ]; then
  echo "capsync: installing into $VENV" >&2
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip >&2
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e "$SPEC" >&2
  touch "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
