#!/usr/bin/env bash
# The whole suite (`make test`, which CI runs): stages one after another, the jobs inside a stage side
# by side. Each job's output goes to build/test-logs/<job>.log and is printed whole when the job ends,
# so parallel jobs never interleave. At the end: a table of wall time per stage and per job.
#
#   PODNET_TEST_STAGES  stages to run (default: "static lab bench")
#   PODNET_TEST_JOBS    jobs at once inside a stage (default 2; the machine has 2 cores and the lab
#                       jobs spend much of their time waiting on packets, daemons and timeouts)
#   PODNET_XDIST        pytest-xdist workers for the integration files (default 3, --dist loadfile)
set -uo pipefail
cd "$(dirname "$0")/.."
LOGS=build/test-logs
rm -rf "$LOGS" && mkdir -p "$LOGS"
STAGES=${PODNET_TEST_STAGES:-static lab bench}
JOBS=${PODNET_TEST_JOBS:-2}
XDIST=${PODNET_XDIST:-3}
MAKE="make --no-print-directory PODNET_BOOTSTRAPPED=1"
SCENARIOS=$(cd molecule && for d in */molecule.yml; do echo "${d%/molecule.yml}"; done)

rows=()     # "stage|job|seconds|result"
failed=0
t0=$(date +%s)

# run_jobs STAGE NAME=COMMAND...: at most $JOBS at once; each job's log printed when it ends.
run_jobs() {
  local stage=$1; shift
  local -A pid_of=() start_of=()
  local queue=("$@") running=0 spec name cmd
  finish_one() {   # its own variables: it runs inside run_jobs' loop (bash scoping is dynamic)
    local done_pid job secs jrc
    wait -n -p done_pid "${pid_of[@]}" 2>/dev/null; jrc=$?
    for job in "${!pid_of[@]}"; do
      [ "${pid_of[$job]}" = "$done_pid" ] || continue
      secs=$(( $(date +%s) - start_of[$job] ))
      echo; echo "==================== $stage / $job: $([ $jrc = 0 ] && echo passed || echo "FAILED (exit $jrc)") in ${secs}s"
      cat "$LOGS/$job.log"
      rows+=("$stage|$job|$secs|$([ $jrc = 0 ] && echo ok || echo "FAILED ($jrc)")")
      [ $jrc = 0 ] || failed=1
      unset "pid_of[$job]"
    done
    running=$((running - 1))
  }
  for spec in "${queue[@]}"; do
    name=${spec%%=*}; cmd=${spec#*=}
    while [ "$running" -ge "$JOBS" ]; do finish_one; done
    echo "---- $stage / $name: started ($cmd)"
    bash -c "$cmd" >"$LOGS/$name.log" 2>&1 </dev/null &
    pid_of[$name]=$!; start_of[$name]=$(date +%s); running=$((running + 1))
  done
  while [ "$running" -gt 0 ]; do finish_one; done
}

stage() {
  local name=$1; shift
  local s=$(date +%s)
  run_jobs "$name" "$@"
  rows+=("$name|(stage)|$(( $(date +%s) - s ))|")
}

s=$(date +%s)
scripts/bootstrap.sh || { echo "bootstrap failed"; exit 1; }
rows+=("bootstrap|(stage)|$(( $(date +%s) - s ))|")

for st in $STAGES; do
  case $st in
    static) stage static "sanity=$MAKE sanity" "lint=$MAKE lint" "unit=$MAKE unit" ;;
    lab)
      jobs=("integration=$MAKE integration PYTEST_ARGS='-n $XDIST --dist loadfile'")
      for sc in $SCENARIOS; do jobs+=("molecule-$sc=$MAKE molecule SCENARIO=$sc"); done
      stage lab "${jobs[@]}" ;;
    bench) stage bench "bench-quick=$MAKE bench-quick" ;;
    *) echo "unknown stage $st"; exit 2 ;;
  esac
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
