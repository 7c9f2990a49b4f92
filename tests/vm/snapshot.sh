#!/bin/sh
# What podnet keeps on a node, one key=value line each (tests/vm/reboot.yml compares them across a
# reboot). Counts where the items are many, names where they are few.
names() { sort | tr '\n' ' ' | sed 's/ $//'; }
echo "units_enabled=$(systemctl list-unit-files 'podnet*' --state=enabled --no-legend | awk '{print $1}' | names)"
echo "units_active=$(systemctl list-units 'podnet*' --state=active --no-legend --plain | awk '{print $1}' | names)"
echo "files=$(find /etc/podnet /var/lib/podnet /etc/sysctl.d/90-podnet.conf /etc/iproute2/rt_protos.d/podnet.conf -type f 2>/dev/null | names)"
echo "fstab_bpffs=$(grep -c ' /sys/fs/bpf bpf ' /etc/fstab)"
echo "bpffs_mounted=$(grep -c ' /sys/fs/bpf bpf ' /proc/mounts)"
echo "bpf_pins=$(find /sys/fs/bpf/podnet -mindepth 1 2>/dev/null | wc -l)"
echo "bpf_tc_programs=$(bpftool net show 2>/dev/null | grep -c ' id ')"
echo "links=$(ip -o link show | awk -F': ' '{print $2}' | cut -d@ -f1 | grep -E '^(podnet|lxc|gnv|geneve|vxlan|cilium)' | names)"
echo "routes_podnet=$(ip route show table all proto podnet | wc -l)"
echo "routes_bird=$(ip route show table all proto bird | wc -l)"
echo "ip_rules=$(ip rule show | wc -l)"
echo "netns=$(ip netns list | awk '{print $1}' | names)"
echo "nft_tables=$(nft list tables 2>/dev/null | names)"
echo "sysctl_ip_forward=$(sysctl -n net.ipv4.ip_forward)"
echo "run_podnet=$(find /run/podnet -type f 2>/dev/null | wc -l)"
