#!/usr/bin/env bash
# facefleet run over one generated 1080p video with several worker layouts (GPU machine).
# Usage: bash bench/sweep_gpu.sh [FRAMES]   (PYTHONPATH must reach facefleet and its deps)
set -u
frames=${1:-600}
video=bench/work/faces_1920x1080_${frames}.mp4
[ -f "$video" ] || python3 -m facefleet.samples tests/data "$video" --width 1920 --height 1080 --frames "$frames" >/dev/null
for opts in "" "--gpu-share 0.5" "--gpu-share 0.25" "--gpu-share 0.25 --chunks-per-worker 3" "--gpu-share 0.125 --chunks-per-worker 1"; do
  start=$(date +%s.%N)
  line=$(python3 -m facefleet run "$video" -o /tmp/sweep_out.mp4 -q $opts 2>&1 | grep -E "^ok|FAILED|rror" | tail -1)
  end=$(date +%s.%N)
  echo "[$opts] wall $(python3 -c "print(round($end - $start, 2))") s :: $line"
done
