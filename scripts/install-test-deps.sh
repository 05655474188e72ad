#!/usr/bin/env bash
# Installs the real peers that the tests talk to (NBD clients, fio, QEMU,
# etcd, protoc) from Debian packages when any is missing. Needs root or sudo;
# without either it says what to install and leaves the decision to the tests
# (which skip on a workstation and fail under CI).
set -euo pipefail

pkgs=(fio libnbd-bin nbdkit qemu-utils qemu-system-x86 busybox-static etcd-server etcd-client e2fsprogs cpio xz-utils zstd kmod)
missing=()
for p in "${pkgs[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
	if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
		SUDO="sudo -n"
	else
		echo "install-test-deps: missing Debian packages: ${missing[*]}" >&2
		echo "install-test-deps: run as root: apt-get install -y ${missing[*]}" >&2
		exit 0
	fi
fi
echo "install-test-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
