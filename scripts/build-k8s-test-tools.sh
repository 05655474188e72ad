#!/usr/bin/env bash
# Builds the Kubernetes peers of the Kubernetes tests from the Go module proxy
# into a cache directory outside the repository, keyed by version:
#
#   $dir/kube-apiserver-<k8s version>   k8s.io/kubernetes/cmd/kube-apiserver
#   $dir/helm-<helm version>            helm.sh/helm/v4/cmd/helm
#
# $dir is $NEXSTOR_TEST_K8S_DIR, else $XDG_CACHE_HOME/nexstor-test/k8s, else
# ~/.cache/nexstor-test/k8s (beside the test kernel of fetch-test-kernel.sh).
# A binary already there is left alone; pass --force to rebuild. The etcd the
# API server stores into is Debian's etcd-server (install-test-deps.sh).
#
# kube-apiserver cannot be built with `go install pkg@version` (its go.mod has
# replace directives), so it is built in a scratch module that requires
# k8s.io/kubernetes and pins every staging module at the matching v0.x
# release. Cold, this takes about 25 minutes on a 2-core machine; it runs
# under `nice` so that it does not starve other work. Needs only Go and the
# module proxy; prints the cache directory on success.
set -euo pipefail

K8S_VERSION="${NEXSTOR_TEST_K8S_VERSION:-v1.37.2}"
HELM_VERSION="${NEXSTOR_TEST_HELM_VERSION:-v4.3.2}"

force=0
what=(kube-apiserver helm)
for a in "$@"; do
	case "$a" in
	--force) force=1 ;;
	kube-apiserver | helm) what=("$a") ;;
	*) echo "usage: $0 [--force] [kube-apiserver|helm]" >&2; exit 2 ;;
	esac
done

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

build_kube_apiserver() {
	local out="$dir/kube-apiserver-$K8S_VERSION"
	if [ "$force" -eq 0 ] && [ -x "$out" ]; then
		return 0
	fi
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
	printf '//go:build tools\n\npackage tools\n\nimport _ "k8s.io/kubernetes/cmd/kube-apiserver"\n' >"$work/tools.go"
	(
		cd "$work"
		export GOFLAGS=-mod=mod CGO_ENABLED=0
		go get "k8s.io/kubernetes/cmd/kube-apiserver@$K8S_VERSION"
		"${nice_cmd[@]}" go build -p 2 -trimpath -ldflags "-s -w \
			-X k8s.io/component-base/version.gitVersion=$K8S_VERSION \
			-X k8s.io/component-base/version.gitMajor=1 \
			-X k8s.io/component-base/version.gitMinor=$minor" \
			-o "$work/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver
	)
	mv "$work/kube-apiserver" "$out"
	echo "build-k8s-test-tools: kube-apiserver $K8S_VERSION in $out" >&2
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

for w in "${what[@]}"; do
	case "$w" in
	kube-apiserver) build_kube_apiserver ;;
	helm) build_helm ;;
	esac
done
echo "$dir"
