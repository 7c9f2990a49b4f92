#!/usr/bin/env bash
# The whole suite (`make test`, which CI runs): every job of every stage in one pool, at most
# $PODNET_TEST_JOBS at once, the longest first. The integration files set the run's length, so they
# start at once; the static checks, the molecule scenarios (longest first) and the quick benches
# share the other slot. Each job's output goes to build/test-logs/<job>.log and is printed whole
# when the job ends, so parallel jobs never interleave. At the end: a table of wall time per stage
# (from its first job's start to its last job's end; stages overlap) and per job.
#
# The vm stage (make test-vm: Debian 12 VMs under qemu TCG) runs alone after the others, since its
# VMs need every CPU the machine has. It runs the scenarios of $PODNET_VM_SCENARIOS, by default
# vm_tunnel_geneve only (about 17 min on this kind of machine, the image build 4 min more on a fresh
# one): with vm_bgp too (about 15 min more) .ci/run would go past its 60-minute budget. make test-vm
# alone runs every VM scenario.
#
#   PODNET_TEST_STAGES  stages to run (default: "static lab bench vm")
#   PODNET_VM_SCENARIOS the vm stage's scenarios (default: vm_tunnel_geneve)
#   PODNET_TEST_JOBS    jobs at once (default 2; the machine has 2 cores and the lab jobs spend much
#                       of their time waiting on packets, daemons and timeouts)
#   PODNET_XDIST        pytest-xdist workers for the integration files (default 3, --dist loadfile)
set -uo pipefail
cd "$(dirname "$0")/.."
LOGS=build/test-logs
rm -rf "$LOGS" && mkdir -p "$LOGS"
STAGES=${PODNET_TEST_STAGES:-static lab bench vm}
VM_SCENARIOS=${PODNET_VM_SCENARIOS:-vm_tunnel_geneve}
JOBS=${PODNET_TEST_JOBS:-2}
XDIST=${PODNET_XDIST:-3}
MAKE="make --no-print-directory PODNET_BOOTSTRAPPED=1"
# Molecule scenarios, longest first (wall seconds in the clean-clone run at 7c42626: ipam 346, bgp 223,
# default 117, native 58); scenarios not listed follow.
SCENARIOS=$(cd molecule && { for s in ipam datapath bgp default native; do [ -f "$s/molecule.yml" ] && echo "$s"; done
  for d in */molecule.yml; do echo "${d%/molecule.yml}"; done; } | grep -v '^vm_' | awk '!seen[$0]++')

rows=()     # "stage|job|seconds|result"
failed=0
t0=$(date +%s)
declare -A stage_first=() stage_last=()

# run_jobs STAGE:NAME=COMMAND...: at most $JOBS at once, in the order given; each job's log printed
# when it ends.
run_jobs() {
  local -A pid_of=() start_of=() stage_of=()
  local running=0 spec name cmd st
  finish_one() {   # its own variables: it runs inside run_jobs' loop (bash scoping is dynamic)
    local done_pid job secs jrc now
    wait -n -p done_pid "${pid_of[@]}" 2>/dev/null; jrc=$?
    now=$(date +%s)
    for job in "${!pid_of[@]}"; do
      [ "${pid_of[$job]}" = "$done_pid" ] || continue
      secs=$(( now - start_of[$job] ))
      echo; echo "==================== ${stage_of[$job]} / $job: $([ $jrc = 0 ] && echo passed || echo "FAILED (exit $jrc)") in ${secs}s"
      cat "$LOGS/$job.log"
      rows+=("${stage_of[$job]}|$job|$secs|$([ $jrc = 0 ] && echo ok || echo "FAILED ($jrc)")")
      stage_last[${stage_of[$job]}]=$now
      [ $jrc = 0 ] || failed=1
      unset "pid_of[$job]"
    done
    running=$((running - 1))
  }
  for spec in "$@"; do
    st=${spec%%:*}; spec=${spec#*:}
    name=${spec%%=*}; cmd=${spec#*=}
    while [ "$running" -ge "$JOBS" ]; do finish_one; done
    echo "---- $st / $name: started ($cmd)"
    bash -c "$cmd" >"$LOGS/$name.log" 2>&1 </dev/null &
    pid_of[$name]=$!; start_of[$name]=$(date +%s); stage_of[$name]=$st; running=$((running + 1))
    [ -n "${stage_first[$st]:-}" ] || stage_first[$st]=${start_of[$name]}
  done
  while [ "$running" -gt 0 ]; do finish_one; done
}

s=$(date +%s)
scripts/bootstrap.sh || { echo "bootstrap failed"; exit 1; }
rows+=("bootstrap|(stage)|$(( $(date +%s) - s ))|")

jobs=()
for st in $STAGES; do
  case $st in
    static|lab|bench|vm) ;;
    *) echo "unknown stage $st"; exit 2 ;;
  esac
done
has() { [[ " $STAGES " == *" $1 "* ]]; }
has lab && jobs+=("lab:integration=$MAKE integration PYTEST_ARGS='-n $XDIST --dist loadfile'")
has static && jobs+=("static:sanity=$MAKE sanity" "static:lint=$MAKE lint" "static:unit=$MAKE unit")
if has lab; then for sc in $SCENARIOS; do jobs+=("lab:molecule-$sc=$MAKE molecule SCENARIO=$sc"); done; fi
has bench && jobs+=("bench:bench-quick=$MAKE bench-quick")
[ ${#jobs[@]} -eq 0 ] || run_jobs "${jobs[@]}"
has vm && run_jobs "vm:test-vm=$MAKE test-vm VM_SCENARIOS='$VM_SCENARIOS'"
for st in $STAGES; do
  rows+=("$st|(stage)|$(( stage_last[$st] - stage_first[$st] ))|")
done

echo
echo "make test: wall time per stage and job (total $(( $(date +%s) - t0 ))s)"
printf '%-10s %-22s %8s  %s\n' STAGE JOB SECONDS RESULT
for r in "${rows[@]}"; do
  IFS='|' read -r a b c d <<<"$r"
  printf '%-10s %-22s %8s  %s\n' "$a" "$b" "$c" "$d"
done
if [ $failed = 0 ]; then echo "make test: all suites passed"; else echo "make test: FAILED (see the logs above, also in $LOGS/)"; fi
exit $failed
