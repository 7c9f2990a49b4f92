#!/usr/bin/env bash
# What the VM tier (make test-vm) needs beyond scripts/bootstrap.sh, as root on Debian 12: qemu (TCG;
# nested KVM hangs on this kind of machine), qemu-img for the overlays, debootstrap for the node image,
# vde2 for the underlay hub, the ssh client. Idempotent: a second run installs nothing. Separate from
# scripts/bootstrap.sh so that the namespace suite never pays for it.
set -euo pipefail
APT_PACKAGES=(qemu-system-x86 qemu-utils debootstrap vde2 openssh-client e2fsprogs)
installed=$(dpkg-query -W -f='${Package} ${Status}\n' "${APT_PACKAGES[@]}" 2>/dev/null | awk '/install ok installed/ {print $1}')
missing=()
for p in "${APT_PACKAGES[@]}"; do
  grep -qx "$p" <<<"$installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "vm bootstrap: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
