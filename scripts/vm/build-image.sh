#!/usr/bin/env bash
# Build the Debian 12 node image of the VM tier (DESIGN.md section 9: guests have no network to
# install from, so everything the roles install is baked in). Cached by the hash of its inputs (this
# script, the guest files under scripts/vm/guest/ and requirements-guest.txt): a second run with the
# same inputs prints the cache directory and does nothing else.
#
# Output, in $PODNET_VM_CACHE/image-<hash>/ (default /var/cache/podnet-vm):
#   root.img      raw ext4 (mkfs.ext4 -d: no loop mount, no root-only block device), the base of every
#                 VM's qcow2 overlay; never written by a VM
#   vmlinuz, initrd.img   the guest's own kernel and a small initrd (virtio + ext4 only), booted
#                 directly by qemu (no boot loader in the image)
#   id_ed25519(.pub)      the controller's ssh key, authorized for root in the guest
#   manifest.txt  kernel release and every package with its version
#
# What is baked in, and why:
#   - linux-image-cloud-amd64 and the MATCHING linux-headers-cloud-amd64: the guest's own kernel (6.1,
#     with the geneve and dummy drivers this host lacks) and the headers bcc compiles against
#   - what roles/node_prereqs installs (python3-bpfcc, python3-venv, python3-pip, bpftool, iproute2,
#     nftables, python3-nftables) plus python3-apt for Ansible's apt module: with
#     node_prereqs_manage_packages true the role's apt tasks then find everything installed
#   - a wheelhouse (requirements-guest.txt, from PyPI) and /etc/pip.conf pointing pip at it with no
#     index: the role's pip task builds the podnet venv offline
#   - bird2 and frr (the bgp role's speakers, and FRR for the vm_bgp scenario's peer), both disabled:
#     podnet runs its own units; tcpdump for the Geneve capture
#   - an empty local apt repository as the only source: `apt-get update` succeeds offline
#   - openssh-server WITHOUT host keys (each VM makes its own at first boot), systemd, a one-shot unit
#     (guest/podnet-vm-init) that sets the underlay address from the kernel command line; kvm
#     modules blacklisted (qemu -cpu max shows VMX, and a guest kvm module hangs under TCG)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
CACHE=${PODNET_VM_CACHE:-/var/cache/podnet-vm}
MIRROR=${PODNET_VM_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
# Debian's own .deb cache: a machine that installed these packages before reuses them.
DEB_CACHE=${PODNET_VM_DEB_CACHE:-/var/cache/apt/archives}
PACKAGES=(systemd-sysv udev kmod openssh-server python3 python3-apt iproute2 iputils-ping procps
  linux-image-cloud-amd64 linux-headers-cloud-amd64 initramfs-tools zstd
  python3-bpfcc python3-venv python3-pip bpftool nftables python3-nftables bird2 frr tcpdump)

hash=$( { cat "$0" "$here/requirements-guest.txt"; \
  for f in "$here"/guest/*; do echo "== ${f##*/}"; cat "$f"; done; echo "$MIRROR $SUITE"; } | sha256sum | cut -c1-16)
out=$CACHE/image-$hash
if [ -f "$out/ok" ]; then
  echo "$out"
  exit 0
fi
t0=$(date +%s)
mkdir -p "$CACHE"
work=$(mktemp -d "$CACHE/build-$hash.XXXXXX")
trap 'rm -rf "$work"' EXIT
root=$work/root
log=$work/build.log
say() { echo "build-image: $* ($(( $(date +%s) - t0 ))s)" >&2; }

say "debootstrap $SUITE (log: $log)"
mkdir -p "$DEB_CACHE"
# No service may start in the chroot (policy-rc.d 101), and none does: debootstrap runs no init.
if ! debootstrap --variant=minbase --cache-dir="$DEB_CACHE" --include="$(IFS=,; echo "${PACKAGES[*]}")" \
    "$SUITE" "$root" "$MIRROR" >"$log" 2>&1; then
  tail -n 30 "$log" >&2
  exit 1
fi

say "configuring the guest"
install -m 0755 "$here/guest/podnet-vm-init" "$root/usr/local/sbin/podnet-vm-init"
install -m 0644 "$here/guest/podnet-vm-init.service" "$root/etc/systemd/system/podnet-vm-init.service"
ln -sf /etc/systemd/system/podnet-vm-init.service "$root/etc/systemd/system/multi-user.target.wants/podnet-vm-init.service"
# Units that would only cost CPU under TCG, or run daemons podnet runs itself.
for u in apt-daily.timer apt-daily-upgrade.timer man-db.timer e2scrub_all.timer fstrim.timer \
    e2scrub_reap.service getty-static.service getty@tty1.service systemd-binfmt.service \
    proc-sys-fs-binfmt_misc.automount modprobe@fuse.service modprobe@drm.service systemd-pstore.service \
    frr.service bird.service systemd-networkd.service systemd-networkd-wait-online.service; do
  ln -sf /dev/null "$root/etc/systemd/system/$u"
done
rm -f "$root"/etc/ssh/ssh_host_*
echo "/dev/vda / ext4 defaults,noatime 0 1" > "$root/etc/fstab"
echo "node" > "$root/etc/hostname"
printf 'blacklist kvm\nblacklist kvm_intel\nblacklist kvm_amd\n' > "$root/etc/modprobe.d/podnet-vm.conf"
# The initrd needs only the root disk.
printf 'MODULES=list\nCOMPRESS=zstd\n' > "$root/etc/initramfs-tools/conf.d/podnet-vm"
printf 'virtio_pci\nvirtio_blk\next4\n' >> "$root/etc/initramfs-tools/modules"
chroot "$root" update-initramfs -u -k all >>"$log" 2>&1
# The only apt source: an empty local repository (apt-get update works offline, finds nothing new).
mkdir -p "$root/var/lib/podnet-vm/repo"
: > "$root/var/lib/podnet-vm/repo/Packages"
echo "deb [trusted=yes] file:/var/lib/podnet-vm/repo ./" > "$root/etc/apt/sources.list"
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/archives/*.deb "$root"/var/cache/apt/*.bin
# The wheelhouse and pip's offline config.
mkdir -p "$root/opt/podnet/wheelhouse"
pip=${PODNET_VM_PIP:-$(cd "$here/../.." && pwd)/.venv/bin/pip}
"$pip" download -q --disable-pip-version-check --only-binary=:all: --python-version 3.11 \
  -d "$root/opt/podnet/wheelhouse" -r "$here/requirements-guest.txt" >>"$log" 2>&1
printf '[global]\nno-index = true\nfind-links = /opt/podnet/wheelhouse\n' > "$root/etc/pip.conf"
mkdir -p "$work/out"
ssh-keygen -q -t ed25519 -N '' -C podnet-vm -f "$work/out/id_ed25519"
install -d -m 0700 "$root/root/.ssh"
install -m 0600 "$work/out/id_ed25519.pub" "$root/root/.ssh/authorized_keys"

kver=$(ls "$root/lib/modules" | sort -V | tail -n1)
cp "$root/boot/vmlinuz-$kver" "$work/out/vmlinuz"
cp "$root/boot/initrd.img-$kver" "$work/out/initrd.img"
[ -d "$root/usr/src/linux-headers-$kver" ] || { echo "build-image: no headers for $kver in the image" >&2; exit 1; }
{ echo "kernel $kver"; chroot "$root" dpkg-query -W -f='${Package} ${Version}\n'; echo "wheels:"; ls "$root/opt/podnet/wheelhouse"; } \
  > "$work/out/manifest.txt"

say "mkfs.ext4 -d"
mkfs.ext4 -q -F -L podnet-root -d "$root" "$work/out/root.img" 4G >>"$log" 2>&1
touch "$work/out/ok"
rm -rf "$out"
mv "$work/out" "$out"
say "image $out ($(du -sh --apparent-size "$out/root.img" | cut -f1) apparent, $(du -sh "$out/root.img" | cut -f1) used)"
echo "$out"
