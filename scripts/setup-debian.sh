#!/usr/bin/env bash
# Install what rtcroom needs on Debian 12, idempotently: the GStreamer packages (1.22), the
# tools the tests call (gst-discoverer-1.0, headless Chromium for the browser tests),
# pkg-config, iproute2/iptables for the lossy-link bench, Janus for the side-by-side bench,
# redis-server for the multi-node tests (they start their own on a free loopback port),
# and a Rust toolchain if none is there.
# Safe to run again: it installs only what is missing, and runs `apt-get update` only then.
set -euo pipefail

PACKAGES=(
  libgstreamer1.0-dev
  libgstreamer-plugins-base1.0-dev
  libgstreamer-plugins-bad1.0-dev
  gstreamer1.0-plugins-base
  gstreamer1.0-plugins-good
  gstreamer1.0-plugins-bad
  gstreamer1.0-plugins-ugly
  gstreamer1.0-libav
  gstreamer1.0-tools
  gstreamer1.0-plugins-base-apps
  chromium
  pkg-config
  iproute2
  iptables
  janus
  redis-server
  build-essential
  ca-certificates
  curl
)

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
else
  echo "setup: Debian packages already installed"
fi

# Janus is only for `rtcroom bench --target janus|both`, which starts its own on free ports:
# the package's system service (started on install where systemd runs) is not wanted.
if [ -d /run/systemd/system ] && systemctl is-enabled janus >/dev/null 2>&1; then
  echo "setup: disabling the janus system service (the bench starts its own)"
  $SUDO systemctl disable --now janus || true
fi

# The cluster tests start their own redis-server on a free port; the system service is not
# wanted either.
if [ -d /run/systemd/system ] && systemctl is-enabled redis-server >/dev/null 2>&1; then
  echo "setup: disabling the redis-server system service (the tests start their own)"
  $SUDO systemctl disable --now redis-server || true
fi

if ! command -v cargo >/dev/null 2>&1; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    echo "setup: cargo is in ~/.cargo/bin; add it to PATH (source ~/.cargo/env)"
  else
    echo "setup: installing the Rust toolchain 1.95 with rustup"
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal \
      --default-toolchain 1.95 --component rustfmt,clippy
  fi
fi
