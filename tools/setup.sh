#!/usr/bin/env bash
# Set up graphreg on a fresh Debian/Python machine: system libraries for open3d's headless renderer,
# the CPU build of torch (installed first, so no CUDA build is pulled), then graphreg with every extra and its test tools.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! ldconfig -p | grep -q "libusb-1.0.so.0" || ! ldconfig -p | grep -q "libEGL.so.1" || ! ldconfig -p | grep -q "libvulkan.so.1"; then
    if [ "$(id -u)" = "0" ]; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libusb-1.0-0 libgl1 libegl1 libvulkan1 mesa-vulkan-drivers >/dev/null
    else
        echo "warning: open3d needs libusb-1.0-0 libgl1 libegl1 libvulkan1 mesa-vulkan-drivers (apt); install them as root" >&2
    fi
fi

PIP="python -m pip --disable-pip-version-check -q"
python -c "import torch, sys; sys.exit(0 if torch.__version__.startswith('2.13.0') else 1)" 2>/dev/null \
    || $PIP install "torch==2.13.0"
$PIP install -e ".[all,test]"
