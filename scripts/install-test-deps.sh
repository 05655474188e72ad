#!/usr/bin/env bash
# Installs the real peers that the tests talk to (NBD clients, fio, QEMU,
# etcd, protoc) from Debian packages when any is missing, and builds
# kube-apiserver and helm for the Kubernetes tests (build-k8s-test-tools.sh:
# into a cache outside the repository, about 25 minutes the first time). Needs root or sudo;
# without either it says what to install and leaves the decision to the tests
# (which skip on a workstation and fail under CI).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
pkgs=(fio libnbd-bin nbdkit qemu-utils qemu-system-x86 busybox-static etcd-server etcd-client e2fsprogs xfsprogs cpio xz-utils zstd kmod jq util-linux)
missing=()
for p in "${pkgs[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

# The kernel interop tests boot Debian's kernel under QEMU; it is unpacked into
# a cache directory (never installed into /boot) by fetch-test-kernel.sh.
fetch_cached() {
	if ! "$here/fetch-test-kernel.sh"; then
		echo "install-test-deps: could not fetch the test kernel; the kernel tests will say so" >&2
	fi
	# The Kubernetes tests run a kube-apiserver and helm built from the Go
	# module proxy (neither is packaged by Debian).
	if ! "$here/build-k8s-test-tools.sh" >/dev/null; then
		echo "install-test-deps: could not build kube-apiserver and helm; the Kubernetes tests will say so" >&2
	fi
}
if [ ${#missing[@]} -eq 0 ]; then
	fetch_cached
	exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
	if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
		SUDO="sudo -n"
	else
		echo "install-test-deps: missing Debian packages: ${missing[*]}" >&2
		echo "install-test-deps: run as root: apt-get install -y ${missing[*]}" >&2
		fetch_cached
		exit 0
	fi
fi
echo "install-test-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fetch_cached
