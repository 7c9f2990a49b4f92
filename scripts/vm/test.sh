#!/usr/bin/env bash
# The VM tier (`make test-vm`): its bootstrap, the node image (built once, cached by its inputs), then
# each VM scenario's `molecule test` in turn (never two at once: at most 3 VMs up), then a check that
# no qemu process, hub, socket, overlay or forwarded port of the tier is left. A table of wall time
# per step at the end.
#   scripts/vm/test.sh [SCENARIO...]     (default: every molecule/vm_* scenario)
set -uo pipefail
cd "$(dirname "$0")/../.."
export PATH=$PWD/.venv/bin:$PATH
scenarios=("$@")
[ ${#scenarios[@]} -gt 0 ] || scenarios=($(cd molecule && ls -d vm_*/ | tr -d /))
rows=()
failed=0
t0=$(date +%s)
step() {   # step NAME COMMAND...
  local name=$1 s rc
  shift
  s=$(date +%s)
  echo "==== vm / $name: $*"
  "$@"; rc=$?
  rows+=("$name|$(( $(date +%s) - s ))|$([ $rc = 0 ] && echo ok || echo "FAILED ($rc)")")
  [ $rc = 0 ] || failed=1
  return $rc
}
step bootstrap scripts/vm/bootstrap.sh || exit 1
step image python scripts/vm/vmctl.py image || { failed=1; scenarios=(); }
for sc in "${scenarios[@]}"; do
  step "molecule-$sc" molecule test -s "$sc"
done
# Nothing of the tier may be left: no run directory, no process started from one, no listener on a
# forwarded port of the scenarios' inventories.
leftover() {
  local left=0 ports
  if [ -n "$(ls -A /run/podnet-vm 2>/dev/null)" ]; then echo "left in /run/podnet-vm: $(ls /run/podnet-vm)"; left=1; fi
  if pgrep -af '/run/podnet-vm/' ; then echo "processes of the VM tier are still running"; left=1; fi
  ports=$(grep -ho 'ansible_port: [0-9]*' molecule/vm_*/inventory/hosts.yml | awk '{print $2}' | sort -u | paste -sd'|')
  if ss -Hltn | grep -E "127\.0\.0\.1:($ports)\b"; then echo "a forwarded port is still open"; left=1; fi
  return $left
}
step leftovers leftover
echo
echo "make test-vm: wall time per step (total $(( $(date +%s) - t0 ))s)"
printf '%-28s %8s  %s\n' STEP SECONDS RESULT
for r in "${rows[@]}"; do
  IFS='|' read -r a b c <<<"$r"
  printf '%-28s %8s  %s\n' "$a" "$b" "$c"
done
if [ $failed = 0 ]; then echo "make test-vm: all VM scenarios passed"; else echo "make test-vm: FAILED"; fi
exit $failed
