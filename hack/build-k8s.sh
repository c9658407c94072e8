#!/usr/bin/env bash
# Builds the Kubernetes binaries the tests run (etcd, kube-apiserver, kubectl; and for the
# one-node cluster kubelet, kube-controller-manager, kube-scheduler) from
# Go modules into bin/k8s/<version>/, so no downloaded binary is ever needed.
#
#   hack/build-k8s.sh [binary ...]     default: etcd kube-apiserver kubectl
#   hack/build-k8s.sh --version        prints the version built (the Makefile
#                                      and test/framework/envtestenv ask it)
#
# A binary already built is skipped. When KUBEBUILDER_ASSETS names a folder that
# already holds a binary, that one is used and nothing is built.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# The version is the one hack/go.mod requires: the module built below.
K8S_VERSION=$(sed -n 's|^[[:space:]]*k8s.io/kubernetes v||p' "$here/go.mod" | head -n 1)
[ -n "$K8S_VERSION" ] || { echo "build-k8s: no k8s.io/kubernetes requirement in $here/go.mod" >&2; exit 1; }
if [ "${1:-}" = --version ]; then
	echo "$K8S_VERSION"
	exit 0
fi
root=$(cd "$here/.." && pwd)
out=${K8S_BIN_DIR:-$root/bin/k8s/$K8S_VERSION}
mkdir -p "$out"

binaries=("$@")
[ ${#binaries[@]} -gt 0 ] || binaries=(etcd kube-apiserver kubectl)

declare -A pkg=(
	[etcd]=./cmd/etcd
	[kube-apiserver]=k8s.io/kubernetes/cmd/kube-apiserver
	[kubectl]=k8s.io/kubernetes/cmd/kubectl
	[kubelet]=k8s.io/kubernetes/cmd/kubelet
	[kube-controller-manager]=k8s.io/kubernetes/cmd/kube-controller-manager
	[kube-scheduler]=k8s.io/kubernetes/cmd/kube-scheduler
)

stamp=""
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
	stamp+=" -X $p.gitVersion=v$K8S_VERSION -X $p.gitMajor=${K8S_VERSION%%.*}"
	minor=${K8S_VERSION#*.}
	stamp+=" -X $p.gitMinor=${minor%%.*} -X $p.gitTreeState=clean"
	stamp+=" -X $p.buildDate=1970-01-01T00:00:00Z"
done

cd "$here"
for b in "${binaries[@]}"; do
	[ -n "${pkg[$b]:-}" ] || { echo "build-k8s: unknown binary $b (want one of: ${!pkg[*]})" >&2; exit 2; }
	if [ -n "${KUBEBUILDER_ASSETS:-}" ] && [ -x "$KUBEBUILDER_ASSETS/$b" ]; then
		echo "build-k8s: $b: using $KUBEBUILDER_ASSETS/$b (KUBEBUILDER_ASSETS)"
		continue
	fi
	if [ -x "$out/$b" ]; then
		echo "build-k8s: $b: already built in $out"
		continue
	fi
	echo "build-k8s: $b: building ${pkg[$b]} v$K8S_VERSION (a cold build takes minutes on 2 cores)..."
	start=$(date +%s)
	# -v prints each package as it is compiled, so a long cold build shows progress;
	# the whole log is kept and shown when the build fails.
	log="$out/$b.build.log"
	if ! CGO_ENABLED=0 go build -v -trimpath -ldflags "-s -w$stamp" -o "$out/$b.tmp" "${pkg[$b]}" 2>&1 |
		tee "$log" | awk -v b="$b" '{ n++ } n % 100 == 0 { printf "build-k8s: %s: %d packages compiled...\n", b, n; fflush() }'; then
		tail -n 40 "$log" >&2
		echo "build-k8s: $b: build failed (full log: $log)" >&2
		exit 1
	fi
	rm -f "$log"
	mv "$out/$b.tmp" "$out/$b"
	echo "build-k8s: $b: built in $(($(date +%s) - start))s"
done
