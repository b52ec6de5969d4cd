#!/usr/bin/env bash
# Where a `facefleet run` spends the machine (GPU machine; PYTHONPATH must reach the deps,
# py-spy on PATH): the node's decode+encode ceiling per layout and preset, then the run under
# py-spy twice (threads on the CPU; threads holding the interpreter lock), with vmstat
# alongside. Profiles go to $OUT (collapsed stacks, one line per stack), each summed up by
# bench/spy_summary.py (summary_cpu.txt, summary_gil.txt).
# Usage: bash bench/profile_run_gpu.sh [FRAMES] [RUN OPTIONS...]
set -u
frames=${1:-1800}; shift || true
out=${OUT:-/tmp/profile}; mkdir -p "$out"
video=bench/work/faces_1920x1080_${frames}.mp4
t0=$(date +%s)
[ -f "$video" ] || python3 -m facefleet.samples tests/data "$video" --width 1920 --height 1080 --frames "$frames" >/dev/null
echo "sample video: $(( $(date +%s) - t0 )) s"
[ "${CEILINGS:-1}" = 0 ] || for layout in "1 4 veryfast" "1 8 veryfast" "2 4 veryfast" "4 2 veryfast" "1 8 superfast" "1 8 ultrafast"; do
  read -r procs chunks preset <<<"$layout"
  echo "ceiling $layout: $(python3 bench/encode_ceiling.py "$video" --processes "$procs" --chunks "$chunks" --preset "$preset")"
done
vmstat 1 > "$out/vmstat.txt" & vm=$!
for mode in cpu gil; do
  flag=""; [ "$mode" = gil ] && flag="--gil"
  start=$(date +%s.%N)
  py-spy record --subprocesses --threads $flag -r 50 -f raw -o "$out/spy_$mode.txt" -- \
    python3 -m facefleet run "$video" -o /tmp/profile_out.mp4 -q "$@" 2>&1 | grep -E "^ok|FAILED|rror" | tail -2
  wall=$(python3 -c "print(round($(date +%s.%N) - $start, 2))")
  echo "[$mode] wall $wall s"
  python3 bench/spy_summary.py "$out/spy_$mode.txt" --seconds "$wall" --top 30 > "$out/summary_$mode.txt"
  echo "summary: $out/summary_$mode.txt"; head -40 "$out/summary_$mode.txt"
done
kill $vm
echo "vmstat (us sy id wa per second):"; awk 'NR>2 {printf "%s/%s/%s/%s ", $13, $14, $15, $16} END {print ""}' "$out/vmstat.txt"
