#!/usr/bin/env bash
# Fetches Debian's generic kernel (linux-image-amd64 and the versioned
# linux-image-<release>-amd64 it depends on) for the kernel interop tests and
# unpacks it into a cache directory, without installing anything into /boot:
#
#   $dir/release    the kernel release, e.g. 6.1.0-56-amd64
#   $dir/vmlinuz    the kernel image
#   $dir/modules/   lib/modules/<release> (modules.dep and the *.ko[.xz|.zst])
#
# $dir is $NEXSTOR_TEST_KERNEL_DIR, else $XDG_CACHE_HOME/nexstor-test/kernel,
# else ~/.cache/nexstor-test/kernel. A complete cache is left alone (pass
# --force to refresh it). Needs apt-get and dpkg-deb, no root.
set -euo pipefail

force=0
[ "${1:-}" = "--force" ] && force=1

dir="${NEXSTOR_TEST_KERNEL_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/nexstor-test/kernel}"
complete() { [ -s "$dir/release" ] && [ -s "$dir/vmlinuz" ] && [ -d "$dir/modules" ]; }
if [ "$force" -eq 0 ] && complete; then
	exit 0
fi
mkdir -p "$(dirname "$dir")"
# Test processes of several packages may ask at once: one fetches, the
# others wait for it and then find the cache complete.
if command -v flock >/dev/null 2>&1; then
	exec 9>"$(dirname "$dir")/.kernel-fetch.lock"
	flock 9
	if [ "$force" -eq 0 ] && complete; then
		exit 0
	fi
fi
for tool in apt-get apt-cache dpkg-deb; do
	command -v "$tool" >/dev/null 2>&1 || { echo "fetch-test-kernel: $tool is missing (Debian or Ubuntu needed)" >&2; exit 1; }
done

# linux-image-amd64 is a metapackage: its one dependency names the real one.
versioned="$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')"
if [ -z "$versioned" ]; then
	echo "fetch-test-kernel: cannot resolve the dependency of linux-image-amd64 (run apt-get update?)" >&2
	exit 1
fi
release="${versioned#linux-image-}"

work="$(mktemp -d "$(dirname "$dir")/.kernel-fetch.XXXXXX")"
trap 'rm -rf "$work"' EXIT
sandbox=()
# As root, apt hands the download to the _apt user, who cannot write into a
# home directory; download as root instead of failing over to a warning.
[ "$(id -u)" -eq 0 ] && sandbox=(-o APT::Sandbox::User=root)
(cd "$work" && apt-get download -q "${sandbox[@]}" linux-image-amd64 "$versioned" >/dev/null)
deb="$(ls "$work"/"$versioned"_*.deb)"
mkdir "$work/root" "$work/out"
dpkg-deb -x "$deb" "$work/root"

[ -f "$work/root/boot/vmlinuz-$release" ] || { echo "fetch-test-kernel: $deb has no boot/vmlinuz-$release" >&2; exit 1; }
mods="$work/root/lib/modules/$release"
[ -d "$mods" ] || mods="$work/root/usr/lib/modules/$release"
[ -d "$mods" ] || { echo "fetch-test-kernel: $deb has no modules for $release" >&2; exit 1; }
# The package ships modules.dep only when depmod ran on install; generate it.
if [ ! -s "$mods/modules.dep" ]; then
	command -v depmod >/dev/null 2>&1 || PATH="$PATH:/sbin:/usr/sbin"
	depmod -b "$work/root" "$release"
	mods="$work/root/lib/modules/$release"
	[ -d "$mods" ] || mods="$work/root/usr/lib/modules/$release"
fi

mv "$work/root/boot/vmlinuz-$release" "$work/out/vmlinuz"
mv "$mods" "$work/out/modules"
echo "$release" >"$work/out/release"
chmod -R u+rwX,go+rX "$work/out"

rm -rf "$dir.old"
[ -e "$dir" ] && mv "$dir" "$dir.old"
mv "$work/out" "$dir"
rm -rf "$dir.old"
echo "fetch-test-kernel: Linux $release in $dir"
