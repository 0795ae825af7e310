#!/usr/bin/env bash
# The browser the report's tests open pages in: Debian's chromium package, installed where
# missing (apt, as root or through sudo). $CHROMIUM, when set, names another browser.
set -euo pipefail
if [[ -n "${CHROMIUM:-}" ]] || command -v chromium >/dev/null || command -v chromium-browser >/dev/null; then
  exit 0
fi
echo "installing chromium for the report's browser tests (apt-get install chromium)" >&2
sudo=""
if [[ $(id -u) -ne 0 ]]; then
  sudo="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get install -y --no-install-recommends chromium >/dev/null ||
  { $sudo apt-get update >/dev/null && $sudo apt-get install -y --no-install-recommends chromium >/dev/null; }
command -v chromium >/dev/null || { echo "chromium did not install; set \$CHROMIUM to a Chromium or Chrome binary" >&2; exit 1; }
