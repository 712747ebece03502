#!/usr/bin/env bash
# Lays out Shoal's container root filesystem in DIR: the `shoal` binary (stripped), the shared
# libraries it loads, CA certificates, a non-root user `shoal` (65532), and /var/lib/shoal
# owned by it. The Dockerfile's build stage runs this; CI runs it on the host and builds the
# image from DIR the way the Dockerfile's last stage does.
#   packaging/container/rootfs.sh DIR           builds `shoal` (release) first
#   SHOAL_BIN=target/debug/shoal ... DIR        uses that binary
set -euo pipefail
out=${1:?usage: rootfs.sh DIR}
cd "$(dirname "$0")/../.."
bin=${SHOAL_BIN:-}
if [ -z "$bin" ]; then
  cargo build --release --locked --bin shoal
  bin=target/release/shoal
fi
rm -rf "$out"
mkdir -p "$out"/{usr/local/bin,etc/ssl/certs,var/lib/shoal,tmp}
strip -o "$out/usr/local/bin/shoal" "$bin"
chmod 0755 "$out/usr/local/bin/shoal"
# The libraries it loads, and the loader, at their own paths.
ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' | sort -u |
  while read -r lib; do cp -L --parents "$lib" "$out"; done
cp -L /etc/ssl/certs/ca-certificates.crt "$out/etc/ssl/certs/"
printf 'root:x:0:0:root:/root:/sbin/nologin\nshoal:x:65532:65532:shoal:/var/lib/shoal:/sbin/nologin\n' >"$out/etc/passwd"
printf 'root:x:0:\nshoal:x:65532:\n' >"$out/etc/group"
chown 65532:65532 "$out/var/lib/shoal"
chmod 0700 "$out/var/lib/shoal"
chmod 1777 "$out/tmp"
