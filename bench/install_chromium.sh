#!/bin/sh
# Headless Chromium for the HTML report test (tests/test_report_html.py), which skips
# without one. Does nothing when a Chromium or Chrome is already on PATH; otherwise
# installs Debian's chromium with apt-get when running as root on a system that has it.
set -eu
for b in chromium chromium-browser google-chrome google-chrome-stable chrome headless_shell; do
  if command -v "$b" >/dev/null 2>&1; then
    echo "install_chromium: $(command -v "$b") is already installed"
    exit 0
  fi
done
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "install_chromium: no Chromium, and not root with apt-get: the browser test will be skipped" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
if apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null; then
  echo "install_chromium: installed $(command -v chromium)"
else
  echo "install_chromium: apt-get could not install chromium: the browser test will be skipped" >&2
fi
