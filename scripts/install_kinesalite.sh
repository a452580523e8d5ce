#!/usr/bin/env bash
# kinesalite (a local Kinesis API server, npm) for the resharding tests
# (tests/stream_app/test_stream_kinesis_reshard.py): unlike moto it closes a parent shard on a split
# or merge (GetRecords ends with NextShardIterator = null), so the SHARD_END → child hand-over runs.
# Installed into .cache/kinesalite (git-ignored), where tests/conftest.py looks for it (or set
# KINESALITE_BIN). Idempotent: nothing to do once installed. Under CI=true a missing kinesalite fails
# those tests instead of skipping them.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=.cache/kinesalite
if [ -f "$DIR/node_modules/kinesalite/package.json" ] && [ -f "$DIR/node_modules/.bin/kinesalite" ]; then
  exit 0
fi
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "!! node/npm are missing: install Node.js (e.g. apt-get install nodejs npm), then rerun $0" >&2
  exit 1
fi
mkdir -p "$DIR"
# a package.json of its own, so npm installs right here (never into a parent directory's project)
[ -f "$DIR/package.json" ] || echo '{"name": "fraudscore-test-kinesalite", "private": true}' > "$DIR/package.json"
# leveldown's native build is not needed: kinesalite runs in memory unless given --path
(cd "$DIR" && npm install --no-audit --no-fund --loglevel=error kinesalite@3 >/dev/null)
echo "kinesalite $(node -p "require('./$DIR/node_modules/kinesalite/package.json').version") in $DIR" >&2
