#!/usr/bin/env bash
# Debian packages the tests and the demo need, installed only when missing (idempotent, quick
# when present). Run as root (CI and the dev machines are root); elsewhere it uses sudo.
#   postgresql              the test suite runs the service tests against a real PostgreSQL too
#   chromium                the dashboard is tested in a real headless browser
set -euo pipefail
packages=(postgresql chromium)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "installing Debian packages: ${missing[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
