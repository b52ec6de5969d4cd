#!/usr/bin/env bash
# Where the wall time of default anonymize runs goes on the GPU machine (after staging;
# PYTHONPATH must reach the deps): each run kept in its own store, then
# bench/job_timeline.py on it; the node's decode+encode ceiling for the same layout last.
# Usage: bash bench/timeline_gpu.sh [FRAMES] [RUNS] [RUN OPTIONS...]
set -u
frames=${1:-1800}; runs=${2:-2}; shift 2 || true
video=bench/work/faces_1920x1080_${frames}.mp4
[ -f "$video" ] || python3 -m facefleet.samples tests/data "$video" --width 1920 --height 1080 --frames "$frames" >/dev/null
for i in $(seq "$runs"); do
  store=/tmp/timeline_$i; rm -rf "$store"
  start=$(date +%s.%N)
  python3 -m facefleet run "$video" -o /tmp/timeline_out.mp4 -q --state-dir "$store" "$@" 2>&1 | grep -E "^ok|FAILED|rror" | tail -1
  echo "[run $i] wall $(python3 -c "print(round($(date +%s.%N) - $start, 2))") s"
  python3 bench/job_timeline.py "$store"
done
echo "ceiling 1 x 4 veryfast: $(python3 bench/encode_ceiling.py "$video" --processes 1 --chunks 4)"
