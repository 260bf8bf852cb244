#!/usr/bin/env bash
# Makes sure Debian's chromium (and its driver) is installed: the console's browser tests drive
# /usr/bin/chromium with Playwright (Playwright's own browser download is not used).
set -euo pipefail

if [ -x /usr/bin/chromium ]; then
  exit 0
fi
sudo=""
if [ "$(id -u)" != 0 ]; then
  sudo="sudo"
fi
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium chromium-driver >/dev/null
/usr/bin/chromium --version
