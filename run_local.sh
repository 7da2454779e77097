#!/usr/bin/env bash
# osnet-beam on this machine (Beam's DirectRunner), from a fresh clone.
#   ./run_local.sh                      set up, then run the demo (a generated table, bundled weights)
#   ./run_local.sh --input ... --output ...   set up, then run the pipeline with these options
#   ./run_local.sh --setup-only         set up the virtual environment and stop
# Set-up: .venv with torch==2.13.0 (installed first, so no CUDA build is pulled in) and this
# project with its test extras; skipped when setup.py has not changed since the last set-up.
set -euo pipefail
cd "$(dirname "$0")"
VENV=.venv
PYTHON=${PYTHON:-python3}

setup() {
  local stamp="$VENV/.osnet-setup" want
  want="$(cat setup.py | sha256sum | cut -c1-16)"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then return; fi
  [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q torch==2.13.0
  "$VENV/bin/python" -m pip install -q -e '.[test]'
  echo "$want" > "$stamp"
}

setup
if [ "${1:-}" = "--setup-only" ]; then
  echo "set up: $VENV (activate with: . $VENV/bin/activate)"
  exit 0
fi
if [ "$#" -gt 0 ]; then
  exec "$VENV/bin/python" -m pipeline "$@"
fi

demo=demo_out
mkdir -p "$demo"
"$VENV/bin/python" -m pipeline.demo "$demo/demo_table.csv"
"$VENV/bin/python" -m pipeline --input "$demo/demo_table.csv" --output "$demo/features" \
  --output_format parquet --overwrite
echo
echo "demo input:    $demo/demo_table.csv"
echo "features:      $(ls "$demo"/features/features-*.parquet | tr '\n' ' ')"
echo "errors:        $(ls "$demo"/features/errors-*.jsonl | tr '\n' ' ')"
echo "read them:     $VENV/bin/python -c \"from pipeline import read_features; print(read_features('$demo/features').to_pandas().head())\""
