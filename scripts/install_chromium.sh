#!/usr/bin/env bash
# Installs Debian's `chromium` for the chat-page browser test (tests/server/test_chat_page.py).
# Idempotent: does nothing when /usr/bin/chromium is already there. Needs root (or sudo) and apt-get.
# Playwright drives this system browser; never run `playwright install` (it downloads its own builds).
set -euo pipefail

if [ -x /usr/bin/chromium ]; then
    echo "chromium already installed: $(/usr/bin/chromium --version 2>/dev/null || echo /usr/bin/chromium)"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "error: apt-get not found; install Chromium at /usr/bin/chromium by hand (the browser test skips without it)" >&2
    exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo >/dev/null 2>&1; then
        echo "error: run as root (or install sudo) to apt-get install chromium" >&2
        exit 1
    fi
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q chromium
/usr/bin/chromium --version 2>/dev/null || true
