#!/usr/bin/env bash
# Headless Chromium for the rules backtest report test (tests/rules/test_rules_report.py).
# Debian's package; idempotent. CI calls this before the tests (under CI=true a missing browser
# fails that test instead of skipping it).
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium >/dev/null
/usr/bin/chromium --version
