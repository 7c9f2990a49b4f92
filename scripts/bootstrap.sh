#!/usr/bin/env bash
# Install what the demo and the test suite need on a fresh Debian 12 machine, as root. Idempotent:
# every step checks first, so a second run installs nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(python3-venv python3-pip python3-bpfcc python3-nftables bpftool linux-headers-amd64 iproute2 nftables
  tcpdump iperf3 bird2 frr rsync make git util-linux procps iputils-ping)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "bootstrap: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Kernel headers for bcc (DESIGN.md section 9). No package matches kernels like this VM's; Debian's
# 6.1 headers linked as build/source work for podnet's tc programs. Said loudly, never silent.
kver=$(uname -r)
if [ ! -d "/lib/modules/$kver/build/include" ]; then
  if apt-get install -y -qq --no-install-recommends "linux-headers-$kver" >/dev/null 2>&1; then
    echo "bootstrap: installed linux-headers-$kver"
  else
    build=$(ls -d /usr/src/linux-headers-*-amd64 | sort -V | tail -n1)
    source=${build%-amd64}-common
    mkdir -p "/lib/modules/$kver"
    ln -sfn "$build" "/lib/modules/$kver/build"
    ln -sfn "$source" "/lib/modules/$kver/source"
    echo "bootstrap: WARNING no headers package for kernel $kver; linked $build (build) and" \
         "$source (source) in /lib/modules/$kver - the documented fallback (README, 'Kernel headers')"
  fi
fi

# The venv sees Debian's bcc (system site packages); pyroute2>=0.9 is pinned in requirements.txt.
stamp=.venv/.requirements.sha256
want=$(sha256sum requirements.txt | cut -d' ' -f1)
if [ ! -x .venv/bin/python ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "bootstrap: creating .venv"
  /usr/bin/python3 -m venv --system-site-packages .venv
  .venv/bin/pip install -q --disable-pip-version-check -U pip
  .venv/bin/pip install -q --disable-pip-version-check -r requirements.txt
  echo "$want" > "$stamp"
fi

# Let `podnet.fabric.*` resolve from this checkout (ansible.cfg's collections_path).
mkdir -p build/collections/ansible_collections/podnet
ln -sfn ../../../.. build/collections/ansible_collections/podnet/fabric
