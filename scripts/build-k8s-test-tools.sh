#!/usr/bin/env bash
# Builds the Kubernetes peers of the Kubernetes tests from the Go module proxy
# into a cache directory outside the repository, keyed by version:
#
#   $dir/kube-apiserver-<k8s version>           k8s.io/kubernetes/cmd/kube-apiserver
#   $dir/kube-controller-manager-<k8s version>  k8s.io/kubernetes/cmd/kube-controller-manager
#   $dir/helm-<helm version>                    helm.sh/helm/v4/cmd/helm
#   $dir/csi-provisioner-<version>              github.com/kubernetes-csi/external-provisioner/v6/cmd/csi-provisioner
#
# $dir is $NEXSTOR_TEST_K8S_DIR, else $XDG_CACHE_HOME/nexstor-test/k8s, else
# ~/.cache/nexstor-test/k8s (beside the test kernel of fetch-test-kernel.sh).
# A binary already there is left alone; pass --force to rebuild. The etcd the
# API server stores into is Debian's etcd-server (install-test-deps.sh).
#
# kube-apiserver and kube-controller-manager cannot be built with `go install
# pkg@version` (k8s.io/kubernetes's go.mod has replace directives), so they
# are built in a scratch module that requires k8s.io/kubernetes and pins
# every staging module at the matching v0.x release, both in one `go build`
# so that the packages they share compile once. csi-provisioner has replace
# directives too: it is built in a scratch module of its own that copies
# them (it pins an older k8s.io/kubernetes, so it cannot share the first).
# Cold (empty GOCACHE and GOMODCACHE), on a 2-core machine, beside the
# other tests of `make test`: kube-apiserver 13-16 minutes,
# kube-controller-manager 3 more (most packages are shared), helm 4 and
# csi-provisioner 4-8 (it pins older Kubernetes modules, so little is
# shared): 23-32 minutes in all (measured 2026-12-06).
# Everything runs under `nice` so that it does not starve other work.
# Needs only Go and the module proxy; prints the cache directory on success.
set -euo pipefail

K8S_VERSION="${NEXSTOR_TEST_K8S_VERSION:-v1.37.2}"
HELM_VERSION="${NEXSTOR_TEST_HELM_VERSION:-v4.3.2}"
PROVISIONER_VERSION="${NEXSTOR_TEST_PROVISIONER_VERSION:-v6.4.0}"

force=0
what=(kube-apiserver kube-controller-manager helm csi-provisioner)
picked=()
for a in "$@"; do
	case "$a" in
	--force) force=1 ;;
	kube-apiserver | kube-controller-manager | helm | csi-provisioner) picked+=("$a") ;;
	*) echo "usage: $0 [--force] [kube-apiserver|kube-controller-manager|helm|csi-provisioner]..." >&2; exit 2 ;;
	esac
done
[ "${#picked[@]}" -gt 0 ] && what=("${picked[@]}")

dir="${NEXSTOR_TEST_K8S_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/nexstor-test/k8s}"
mkdir -p "$dir"
command -v go >/dev/null 2>&1 || { echo "build-k8s-test-tools: go is missing" >&2; exit 1; }

# Test processes of several packages may ask at once: one builds, the others
# wait for it and then find the binary there.
if command -v flock >/dev/null 2>&1; then
	exec 9>"$dir/.build.lock"
	flock 9
fi

nice_cmd=()
command -v nice >/dev/null 2>&1 && nice_cmd=(nice -n 10)

# build_kube builds the named commands of k8s.io/kubernetes (kube-apiserver,
# kube-controller-manager) that are not there yet (all of them with --force),
# in one go build.
build_kube() {
	local cmds=() c
	for c in "$@"; do
		if [ "$force" -eq 1 ] || [ ! -x "$dir/$c-$K8S_VERSION" ]; then
			cmds+=("$c")
		fi
	done
	[ "${#cmds[@]}" -gt 0 ] || return 0
	local staging="v0.${K8S_VERSION#v1.}"
	local minor="${K8S_VERSION#v1.}"
	minor="${minor%%.*}"
	local work
	work="$(mktemp -d "$dir/.kapi.XXXXXX")"
	trap 'rm -rf "$work"' RETURN
	local gomod
	gomod="$(cd "$work" && go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')"
	[ -s "$gomod" ] || { echo "build-k8s-test-tools: no go.mod for k8s.io/kubernetes@$K8S_VERSION" >&2; return 1; }
	{
		printf 'module nexstor.test/kapi\n\ngo 1.26.0\n\nrequire k8s.io/kubernetes %s\n\nreplace (\n' "$K8S_VERSION"
		# k8s.io/kubernetes requires its staging modules at v0.0.0 and replaces
		# them with ./staging paths that a module download does not have.
		grep '=> ./staging' "$gomod" | awk '{print $1}' |
			grep -v -e sample-cli-plugin -e sample-controller |
			sed "s|.*|\t& => & $staging|"
		printf ')\n'
	} >"$work/go.mod"
	local pkgs=()
	{
		printf '//go:build tools\n\npackage tools\n\nimport (\n'
		for c in "${cmds[@]}"; do
			printf '\t_ "k8s.io/kubernetes/cmd/%s"\n' "$c"
			pkgs+=("k8s.io/kubernetes/cmd/$c")
		done
		printf ')\n'
	} >"$work/tools.go"
	mkdir "$work/bin"
	(
		cd "$work"
		export GOFLAGS=-mod=mod CGO_ENABLED=0
		go get "${pkgs[@]/%/@$K8S_VERSION}"
		"${nice_cmd[@]}" go build -p 2 -trimpath -ldflags "-s -w \
			-X k8s.io/component-base/version.gitVersion=$K8S_VERSION \
			-X k8s.io/component-base/version.gitMajor=1 \
			-X k8s.io/component-base/version.gitMinor=$minor" \
			-o "$work/bin/" "${pkgs[@]}"
	)
	for c in "${cmds[@]}"; do
		mv "$work/bin/$c" "$dir/$c-$K8S_VERSION"
		echo "build-k8s-test-tools: $c $K8S_VERSION in $dir/$c-$K8S_VERSION" >&2
	done
}

# build_provisioner builds the CSI external-provisioner sidecar. Its go.mod
# replaces the Kubernetes staging modules (a module that requires it does not
# inherit that): the scratch module copies its replace lines.
build_provisioner() {
	local out="$dir/csi-provisioner-$PROVISIONER_VERSION"
	if [ "$force" -eq 0 ] && [ -x "$out" ]; then
		return 0
	fi
	local mod="github.com/kubernetes-csi/external-provisioner/${PROVISIONER_VERSION%%.*}"
	local work
	work="$(mktemp -d "$dir/.prov.XXXXXX")"
	trap 'rm -rf "$work"' RETURN
	local gomod
	gomod="$(cd "$work" && go mod download -json "$mod@$PROVISIONER_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')"
	[ -s "$gomod" ] || { echo "build-k8s-test-tools: no go.mod for $mod@$PROVISIONER_VERSION" >&2; return 1; }
	{
		printf 'module nexstor.test/prov\n\ngo 1.26.0\n\nrequire %s %s\n\n' "$mod" "$PROVISIONER_VERSION"
		# Single-line replace directives (the form its go.mod uses), to
		# versions only: a local path would not be in the download.
		grep -E '^replace [^ ]+ => [^ ]+ v[^ ]+$' "$gomod"
	} >"$work/go.mod"
	printf '//go:build tools\n\npackage tools\n\nimport _ "%s/cmd/csi-provisioner"\n' "$mod" >"$work/tools.go"
	(
		cd "$work"
		export GOFLAGS=-mod=mod CGO_ENABLED=0
		go get "$mod/cmd/csi-provisioner@$PROVISIONER_VERSION"
		"${nice_cmd[@]}" go build -p 2 -trimpath -ldflags "-s -w -X main.version=$PROVISIONER_VERSION" \
			-o "$work/csi-provisioner" "$mod/cmd/csi-provisioner"
	)
	mv "$work/csi-provisioner" "$out"
	echo "build-k8s-test-tools: csi-provisioner $PROVISIONER_VERSION in $out" >&2
}

build_helm() {
	local out="$dir/helm-$HELM_VERSION"
	if [ "$force" -eq 0 ] && [ -x "$out" ]; then
		return 0
	fi
	local work
	work="$(mktemp -d "$dir/.helm.XXXXXX")"
	trap 'rm -rf "$work"' RETURN
	local major="${HELM_VERSION%%.*}"
	local modpath="helm.sh/helm/$major"
	[ "$major" = "v2" ] && modpath="helm.sh/helm"
	GOBIN="$work" CGO_ENABLED=0 "${nice_cmd[@]}" go install -trimpath -ldflags "-s -w" "$modpath/cmd/helm@$HELM_VERSION"
	mv "$work/helm" "$out"
	echo "build-k8s-test-tools: helm $HELM_VERSION in $out" >&2
}

kube=()
for w in "${what[@]}"; do
	case "$w" in
	kube-apiserver | kube-controller-manager) kube+=("$w") ;;
	esac
done
[ "${#kube[@]}" -eq 0 ] || build_kube "${kube[@]}"
for w in "${what[@]}"; do
	case "$w" in
	helm) build_helm ;;
	csi-provisioner) build_provisioner ;;
	esac
done
echo "$dir"
