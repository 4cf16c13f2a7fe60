#!/usr/bin/env bash
# Builds Tollgate's images from this workspace's release binaries, with no registry and no base
# image: each is one layer made from files on this machine, written as an OCI archive.
#
#   tests/cluster/images.sh [IMAGE...]                 # build (default: sidecar operator);
#                                                      # print each archive and its name
#   tests/cluster/images.sh --import SOCKET [IMAGE...] # and import them into a containerd (ctr)
#   tests/cluster/images.sh --contents IMAGE           # what IMAGE holds, then its config
#
# Images (the names and tags the chart uses by default, so `helm install` with its defaults runs
# them; TOLLGATE_IMAGE_TAG overrides the tag):
#   ghcr.io/tollgate-dev/tollgate           the sidecar: tollgate (proxy and init-redirect), both
#                                           iptables back ends with their extensions, CA roots
#   ghcr.io/tollgate-dev/tollgate-operator  tollgate-operator and kubectl-tollgate, CA roots
# and, for the suites' node (tests/cluster/node.sh):
#   tollgate.test/pause                     the pod sandbox (tests/cluster/build.sh's pause)
#   tollgate.test/host                      an empty root whose pods mount this machine's /usr
#                                           (the suites' Python, Redis, curl: real peers in pods)
#
# What each image holds is listed once, in contents() below; the Dockerfiles build the same
# (tests/e2e/test_images.py compares them).
set -euo pipefail
here=$(dirname "$(realpath "$0")")
root=$(realpath "$here/../..")
source "$here/versions.env"
target=${CARGO_TARGET_DIR:-$root/target}
out=$target/images
tag=${TOLLGATE_IMAGE_TAG:-$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "$root/charts/tollgate/Chart.yaml")}
arch=$(uname -m)
case $arch in x86_64) arch=amd64 ;; aarch64) arch=arm64 ;; esac
multiarch=$(gcc -dumpmachine)

# IMAGE: the files it holds, as they are on this machine.
contents() {
  case $1 in
    sidecar)
      echo "$target/release/tollgate=/usr/local/bin/tollgate"
      # init-redirect runs iptables-{nft,legacy}[-save] and ip6tables-…: both multi-call
      # binaries, the names that select them, and the extensions at the path they were built for.
      echo /usr/sbin/xtables-nft-multi
      echo /usr/sbin/xtables-legacy-multi
      for b in iptables ip6tables; do
        for e in nft legacy; do
          for s in "" -save -restore; do echo "/usr/sbin/$b-$e$s"; done
        done
      done
      echo "/usr/lib/$multiarch/xtables"
      echo /etc/ssl/certs/ca-certificates.crt
      ;;
    operator)
      echo "$target/release/tollgate-operator=/usr/local/bin/tollgate-operator"
      echo "$target/release/kubectl-tollgate=/usr/local/bin/kubectl-tollgate"
      echo /etc/ssl/certs/ca-certificates.crt
      ;;
    pause) echo "$TOLLGATE_CLUSTER_BIN/pause=/pause" ;;
    host) ;;
    *) echo "no image $1" >&2; return 1 ;;
  esac
}
# IMAGE: its name, user and entrypoint (as the Dockerfiles' USER and ENTRYPOINT).
config() {
  case $1 in
    sidecar) echo "ghcr.io/tollgate-dev/tollgate:$tag 65532:65532 /usr/local/bin/tollgate" ;;
    operator) echo "ghcr.io/tollgate-dev/tollgate-operator:$tag 65532:65532 /usr/local/bin/tollgate-operator" ;;
    pause) echo "tollgate.test/pause:$KUBERNETES_VERSION 65535:65535 /pause" ;;
    host) echo "tollgate.test/host:1 0:0 /bin/sh" ;;
  esac
}

# SRC[=DEST] DEST_ROOT: copies SRC (a file, a symlink, or a directory) to the same path under
# DEST_ROOT, or to DEST (what it points to, if a link), and the shared libraries it loads (ldd),
# so the image needs nothing else.
copy() {
  local src=${1%%=*} dest=${1#*=} into=$2
  mkdir -p "$into$(dirname "$dest")"
  if [[ $1 == *=* ]]; then
    cp -L "$src" "$into$dest"
  else
    cp -a "$src" "$into$dest"
  fi
  local f lib
  while read -r f; do
    while read -r lib; do
      [[ -e $into$lib ]] && continue
      mkdir -p "$into$(dirname "$lib")"
      cp -L "$lib" "$into$lib"
    done < <(ldd "$f" 2>/dev/null | grep -o '/[^ ]*' | sort -u)
  done < <(find -L "$src" -type f -perm -u+x 2>/dev/null; find -L "$src" -name '*.so*' -type f 2>/dev/null)
}

json_digest() { printf '%s' "$1" | sha256sum | cut -d' ' -f1; }

# IMAGE: writes $out/IMAGE.tar, an OCI archive with one uncompressed layer.
build() {
  local image=$1 work=$out/$1
  read -r name user entrypoint < <(config "$image")
  rm -rf "$work" && mkdir -p "$work/rootfs" "$work/oci/blobs/sha256"
  local r=$work/rootfs
  # Debian's merged /usr, so a binary's interpreter path (/lib64/ld-linux…) resolves.
  mkdir -p "$r/usr/bin" "$r/usr/sbin" "$r/usr/lib" "$r/usr/lib64" "$r/tmp" "$r/etc" "$r/proc" "$r/sys" "$r/dev"
  ln -s usr/bin "$r/bin"; ln -s usr/sbin "$r/sbin"; ln -s usr/lib "$r/lib"; ln -s usr/lib64 "$r/lib64"
  chmod 1777 "$r/tmp"
  printf 'root:x:0:0:root:/root:/bin/sh\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' > "$r/etc/passwd"
  printf 'root:x:0:\nnonroot:x:65532:\n' > "$r/etc/group"
  local item
  while read -r item; do
    [[ -n $item ]] && copy "$item" "$r"
  done < <(contents "$image")
  local layer=$work/layer.tar
  tar -C "$r" --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -cf "$layer" .
  local layer_digest layer_size
  layer_digest=$(sha256sum "$layer" | cut -d' ' -f1)
  layer_size=$(stat -c %s "$layer")
  mv "$layer" "$work/oci/blobs/sha256/$layer_digest"
  local cfg
  cfg=$(printf '{"architecture":"%s","os":"linux","config":{"User":"%s","Entrypoint":["%s"],"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
    "$arch" "$user" "$entrypoint" "$layer_digest")
  local cfg_digest
  cfg_digest=$(json_digest "$cfg")
  printf '%s' "$cfg" > "$work/oci/blobs/sha256/$cfg_digest"
  local manifest
  manifest=$(printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%d},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:%s","size":%d}]}' \
    "$cfg_digest" "${#cfg}" "$layer_digest" "$layer_size")
  local manifest_digest
  manifest_digest=$(json_digest "$manifest")
  printf '%s' "$manifest" > "$work/oci/blobs/sha256/$manifest_digest"
  printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%d,"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"%s"}}]}' \
    "$manifest_digest" "${#manifest}" "$name" "${name##*:}" > "$work/oci/index.json"
  printf '{"imageLayoutVersion":"1.0.0"}' > "$work/oci/oci-layout"
  tar -C "$work/oci" -cf "$out/$image.tar" .
  rm -rf "$work"
  echo "$out/$image.tar $name"
}

socket=
case ${1:-} in
  --contents)
    contents "${2:?--contents IMAGE}"
    config "$2"
    exit
    ;;
  --import)
    socket=${2:?--import SOCKET}
    shift 2
    ;;
esac
images=("$@")
(( ${#images[@]} )) || images=(sidecar operator)

mkdir -p "$out"
# The release binaries, one package selection each (the quick start builds the sidecar's alone,
# and a shared selection would compile the dependencies a second way).
for image in "${images[@]}"; do
  case $image in
    sidecar) cargo build --release --quiet --locked --manifest-path "$root/Cargo.toml" -p tollgate-sidecar ;;
    operator) cargo build --release --quiet --locked --manifest-path "$root/Cargo.toml" -p tollgate-operator ;;
    pause) export TOLLGATE_CLUSTER_BIN=${TOLLGATE_CLUSTER_BIN:-$("$here/build.sh")} ;;
  esac
done
for image in "${images[@]}"; do
  built=$(build "$image")
  if [[ -n $socket ]]; then
    # The list is read whole before it is searched: `ctr … | grep -q` under pipefail fails
    # whenever grep exits on its match before ctr has written the rest (SIGPIPE).
    listed() {
      local refs
      refs=$(ctr --address "$socket" -n k8s.io images ls -q) && grep -qxF "${built#* }" <<<"$refs"
    }
    for attempt in 1 2 3; do
      ctr --address "$socket" -n k8s.io images import "${built% *}" >/dev/null
      listed && break
      sleep "$attempt"
    done
    listed || {
      echo "importing ${built% *} did not make ${built#* }; the node holds:" >&2
      ctr --address "$socket" -n k8s.io images ls >&2
      exit 1
    }
  fi
  echo "$built"
done
