#!/usr/bin/env bash
# Installs the real peers that the tests talk to (NBD clients, fio, QEMU, nvme-cli,
# etcd, protoc) from Debian packages when any is missing, and builds
# kube-apiserver, kube-controller-manager, helm and csi-provisioner for the
# Kubernetes tests (build-k8s-test-tools.sh: into a cache outside the
# repository, about 25 minutes the first time on 2 cores, in
# the background unless NEXSTOR_K8S_BUILD=foreground). Needs root or sudo;
# without either it says what to install and leaves the decision to the tests
# (which skip on a workstation and fail under CI).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
pkgs=(fio libnbd-bin nbdkit qemu-utils qemu-system-x86 busybox-static etcd-server etcd-client e2fsprogs xfsprogs cpio xz-utils zstd kmod jq util-linux nvme-cli)
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
	# The Kubernetes tests run Kubernetes binaries and helm built from the Go
	# module proxy (neither is packaged by Debian). Cold, that is the longest
	# step of `make test` (about 25 minutes on 2 cores), so by default it runs
	# in the background while the other packages are vetted and tested; the
	# Kubernetes tests wait for it (the build holds the cache's lock, see
	# internal/testutil/k8s.go). NEXSTOR_K8S_BUILD=foreground builds first.
	if [ "${NEXSTOR_K8S_BUILD:-background}" = foreground ]; then
		if ! "$here/build-k8s-test-tools.sh" >/dev/null; then
			echo "install-test-deps: could not build the Kubernetes peers; the Kubernetes tests will say so" >&2
		fi
	else
		k8s_background
	fi
}

# k8s_background starts build-k8s-test-tools.sh detached, unless what it
# builds is there already, and returns once the build holds the cache's lock
# (so that a test never finds neither the binaries nor a build under way).
k8s_background() {
	local dir="${NEXSTOR_TEST_K8S_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/nexstor-test/k8s}"
	local kv hv pv
	kv="$(sed -n 's/^K8S_VERSION="${NEXSTOR_TEST_K8S_VERSION:-\(.*\)}"$/\1/p' "$here/build-k8s-test-tools.sh")"
	hv="$(sed -n 's/^HELM_VERSION="${NEXSTOR_TEST_HELM_VERSION:-\(.*\)}"$/\1/p' "$here/build-k8s-test-tools.sh")"
	pv="$(sed -n 's/^PROVISIONER_VERSION="${NEXSTOR_TEST_PROVISIONER_VERSION:-\(.*\)}"$/\1/p' "$here/build-k8s-test-tools.sh")"
	kv="${NEXSTOR_TEST_K8S_VERSION:-$kv}"
	hv="${NEXSTOR_TEST_HELM_VERSION:-$hv}"
	pv="${NEXSTOR_TEST_PROVISIONER_VERSION:-$pv}"
	k8s_built() {
		[ -x "$dir/kube-apiserver-$kv" ] && [ -x "$dir/kube-controller-manager-$kv" ] &&
			[ -x "$dir/helm-$hv" ] && [ -x "$dir/csi-provisioner-$pv" ]
	}
	if k8s_built; then
		return 0
	fi
	if ! command -v flock >/dev/null 2>&1 || ! command -v setsid >/dev/null 2>&1; then
		NEXSTOR_K8S_BUILD=foreground fetch_k8s_foreground
		return 0
	fi
	mkdir -p "$dir"
	echo "install-test-deps: building kube-apiserver and kube-controller-manager $kv, helm $hv and csi-provisioner $pv in the background (log: $dir/build.log); the Kubernetes tests wait for them"
	setsid nohup "$here/build-k8s-test-tools.sh" >"$dir/build.log" 2>&1 </dev/null &
	local i
	for i in $(seq 300); do
		# Held: the build has started (or another one runs).
		flock -n "$dir/.build.lock" true 2>/dev/null || return 0
		if k8s_built; then
			return 0
		fi
		sleep 0.1
	done
	echo "install-test-deps: the background build did not start; see $dir/build.log" >&2
}

fetch_k8s_foreground() {
	if ! "$here/build-k8s-test-tools.sh" >/dev/null; then
		echo "install-test-deps: could not build the Kubernetes peers; the Kubernetes tests will say so" >&2
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
