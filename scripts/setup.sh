#!/usr/bin/env bash
# Installs what Shoal's tests and benchmarks need on a fresh Debian machine that has only the Rust
# toolchain. Idempotent: installs only what is missing, runs `apt-get update` at most once.
set -euo pipefail

# command -> Debian package
declare -A NEED=(
  [curl]=curl          # daemon tests read /metrics; the benchmark's baseline client
  [nginx]=nginx-light  # the benchmark's static origin; the lab's caching-proxy baseline
  [docker-registry]=docker-registry  # the lab's origin and pull-through cache baseline
  [ip]=iproute2        # the lab's hosts (network namespaces, veth, bridge)
  [tc]=iproute2        # the lab's link shaping
  [containerd]=containerd  # mirror tests: containerd 1.6 + ctr pull through the mirror (runc comes with it)
  [ctr]=containerd
  [runc]=runc          # snapshotter tests: ctr run of an image on the shoal snapshotter
  [skopeo]=skopeo      # mirror tests: skopeo copy through registries.conf
  [dockerd]=docker.io  # mirror tests: dockerd with registry-mirrors / HTTPS_PROXY
  [htpasswd]=apache2-utils  # mirror tests: the htpasswd-protected registry
  [systemd-analyze]=systemd  # packaging tests: `systemd-analyze verify` of the units
  [chromium]=chromium  # console tests: the web console in headless Chromium
  [chromedriver]=chromium-driver  # ...driven through WebDriver
)

# From PyPI: the packaging tests validate the Helm chart's objects against Kubernetes' schemas
# (PyYAML comes with it; render.py uses it too).
if ! python3 -c "import kubernetes_validate" >/dev/null 2>&1; then
  echo "setup: installing kubernetes-validate (pip)" >&2
  python3 -m pip install --quiet --disable-pip-version-check kubernetes-validate==1.37.0
fi

missing=()
for cmd in "${!NEED[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || missing+=("${NEED[$cmd]}")
done
[ ${#missing[@]} -eq 0 ] && exit 0
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "setup: need root (or sudo) to install: ${missing[*]}" >&2; exit 1; }
  SUDO=sudo
fi
echo "setup: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
# Packages must not start their services (dockerd, containerd, nginx): the tests start private
# instances. Without a policy-rc.d, invoke-rc.d would start them on a machine with sysvinit.
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
  $SUDO chmod +x /usr/sbin/policy-rc.d
  trap '$SUDO rm -f /usr/sbin/policy-rc.d' EXIT
fi
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
