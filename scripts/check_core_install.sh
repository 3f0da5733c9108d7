#!/usr/bin/env bash
# `pip install .` with no extras gives a working `narset serve`, CLI and client, and no torch:
# what the server image and an operator's machine get. Run by .ci/run in a throwaway venv.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
trap 'kill "${server:-0}" 2>/dev/null || true; rm -rf "$work"' EXIT

python3 -m venv "$work/venv"
"$work/venv/bin/pip" install --quiet "$root"
if "$work/venv/bin/python" -c "import torch" 2>/dev/null; then
    echo "the core install pulled in torch" >&2
    exit 1
fi
"$work/venv/bin/narset" serve --address 127.0.0.1:0 --db "$work/narset.db" --ready-file "$work/address" \
    --log-level warning &
server=$!
for _ in $(seq 1 200); do
    [ -s "$work/address" ] && break
    sleep 0.1
done
address="$(cat "$work/address")"
"$work/venv/bin/narset" health --server "$address"
"$work/venv/bin/narset" blueprints --server "$address" --json | "$work/venv/bin/python" -c \
    "import json, sys; names = {b['name'] for b in json.load(sys.stdin)['blueprints']}; assert 'lora' in names, names"
"$work/venv/bin/python" -c "from narset.client import NarsetClient
with NarsetClient('$address') as narset: assert narset.list_jobs() == []"
kill -TERM "$server"
wait "$server"
# PostgreSQL is an extra: without psycopg, asking for it is a usage error that names the extra.
status=0
"$work/venv/bin/narset" serve --address 127.0.0.1:0 --db postgresql://narset@127.0.0.1:1/narset \
    2>"$work/postgres.err" || status=$?
if [ "$status" != 2 ] || ! grep -q "narset-kasmina\[postgres\]" "$work/postgres.err"; then
    echo "narset serve --db postgresql://... without psycopg: exit $status, not 2 naming the extra" >&2
    cat "$work/postgres.err" >&2
    exit 1
fi
echo "core install: narset serve, CLI and client work without torch (and without psycopg)"
