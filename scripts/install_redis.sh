#!/usr/bin/env bash
# redis-server and redis-cli for the tests: they start their own throw-away Redis nodes and a Redis
# Cluster on free loopback ports (never the Redis you may run on 6379). Debian's package when missing;
# idempotent. Under CI=true a missing redis-server fails those tests instead of skipping them.
set -euo pipefail
if command -v redis-server >/dev/null && command -v redis-cli >/dev/null; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null; then SUDO="sudo -n"; else
    echo "!! redis-server/redis-cli are missing and this user cannot install packages: apt-get install redis-server" >&2
    exit 1
  fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends redis-server redis-tools >/dev/null
# the package may start a system service on 6379; the tests do not need it and do not touch it
redis-server --version
