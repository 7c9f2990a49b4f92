#!/usr/bin/env bash
# Install what the demo and the test suite need on a fresh Debian 12 machine, as root. Idempotent:
# every step checks first, so a second run installs nothing and takes well under a second.
set -euo pipefail
cd "$(dirname "$0")/.."

arch=$(dpkg --print-architecture)
APT_PACKAGES=(python3-venv python3-pip python3-bpfcc python3-nftables bpftool "linux-headers-$arch" iproute2 nftables
  tcpdump iperf3 bird2 frr rsync make git util-linux procps iputils-ping systemd)
# Debian starts these daemons in the machine's own namespace when installed; podnet runs its own.
DISTRO_DAEMONS=(bird.service frr.service)

# One dpkg-query for all (a package it doesn't know is missing too).
installed=$(dpkg-query -W -f='${Package} ${Status}\n' "${APT_PACKAGES[@]}" 2>/dev/null | awk '/install ok installed/ {print $1}')
missing=()
for p in "${APT_PACKAGES[@]}"; do
  grep -qx "$p" <<<"$installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "bootstrap: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # No service may start during the install (policy-rc.d 101 = "action forbidden"), so bird and frr
  # never run in the host's namespace, not even for a moment. Ours is removed afterwards.
  policy=/usr/sbin/policy-rc.d
  own_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod 755 "$policy" && own_policy=1
  fi
  trap '[ "$own_policy" = 1 ] && rm -f "$policy"' EXIT
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# On a machine run by systemd, keep the distro units off (enabled units would start at boot).
if [ -d /run/systemd/system ]; then
  for unit in "${DISTRO_DAEMONS[@]}"; do
    if systemctl is-enabled --quiet "$unit" 2>/dev/null || systemctl is-active --quiet "$unit" 2>/dev/null; then
      systemctl disable --now --quiet "$unit" && echo "bootstrap: disabled and stopped the distro's $unit"
    fi
  done
fi

# Kernel headers for bcc (DESIGN.md section 9). No package matches kernels like this VM's; Debian's
# generic headers for this architecture, linked as build/source, work for podnet's tc programs.
# Said loudly, never silent.
kver=$(uname -r)
if [ ! -d "/lib/modules/$kver/build/include" ]; then
  if apt-get install -y -qq --no-install-recommends "linux-headers-$kver" >/dev/null 2>&1; then
    echo "bootstrap: installed linux-headers-$kver"
  else
    build=$(ls -d /usr/src/linux-headers-*-"$arch" 2>/dev/null | sort -V | tail -n1)
    source=${build%-"$arch"}-common
    if [ -z "$build" ] || [ ! -d "$source" ]; then
      echo "bootstrap: no kernel headers for $kver and no linux-headers-$arch to fall back on" >&2
      exit 1
    fi
    mkdir -p "/lib/modules/$kver"
    ln -sfn "$build" "/lib/modules/$kver/build"
    ln -sfn "$source" "/lib/modules/$kver/source"
    echo "bootstrap: WARNING no headers package for kernel $kver; linked $build (build) and" \
         "$source (source) in /lib/modules/$kver - the documented fallback (README, 'Kernel headers')"
  fi
fi

# The venv sees Debian's bcc (system site packages); pyroute2>=0.9 is pinned in requirements.txt.
# pip's "Location ... is ignored" lines come from a machine-wide find-links that may not exist here.
pipq() {
  local log rc=0
  log=$(mktemp)
  .venv/bin/pip install -q --disable-pip-version-check "$@" >"$log" 2>&1 || rc=$?
  grep -v "is ignored: it is neither" "$log" >&2 || true
  rm -f "$log"
  return $rc
}
stamp=.venv/.requirements.sha256
want=$(sha256sum requirements.txt | cut -d' ' -f1)
if [ ! -x .venv/bin/python ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "bootstrap: creating .venv"
  /usr/bin/python3 -m venv --system-site-packages .venv
  pipq -U pip
  pipq -r requirements.txt
  .venv/bin/python -c 'import ansible, ansible_runner, pyroute2, botocore, molecule, xdist' || { echo "bootstrap: .venv is incomplete" >&2; exit 1; }
  echo "$want" > "$stamp"
fi

# Let `podnet.fabric.*` resolve from this checkout (ansible.cfg's collections_path).
mkdir -p build/collections/ansible_collections/podnet
ln -sfn ../../../.. build/collections/ansible_collections/podnet/fabric
