#!/usr/bin/env bash
# Create .venv and install fraudscore with everything the platform and its tests use.
# Idempotent: reinstalls only when pyproject.toml changed since the last install.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo ">> creating .venv" >&2
  "$PY" -m venv .venv
fi
stamp=.venv/.fraudscore-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo ">> installing fraudscore and its dependencies into .venv (first run takes a minute or two)" >&2
  # (the grep drops pip's noise about this machine's unused local index folders)
  if ! { .venv/bin/python -m pip install --quiet --upgrade pip &&
         .venv/bin/python -m pip install --quiet -e ".[all,dev]"; } 2>&1 | { grep -v "is ignored: it is neither" || true; } >&2
  then
    echo "!! pip install failed (see above)" >&2
    exit 1
  fi
  echo "$want" > "$stamp"
fi
