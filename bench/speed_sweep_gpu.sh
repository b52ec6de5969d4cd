#!/usr/bin/env bash
# One GPU-machine session's speed survey (run after staging; PYTHONPATH must reach the deps):
# bytecode compiled as a pip install does, start-up cost, the gpu tests, the node's decode+encode
# ceiling for several worker layouts, and `facefleet run` with those layouts.
# Usage: bash bench/speed_sweep_gpu.sh [FRAMES]
set -u
frames=${1:-900}
cores=$(nproc)
t0=$(date +%s)
python3 -m compileall -q -j "$cores" /tmp/site >/dev/null 2>&1
echo "compileall: $(( $(date +%s) - t0 )) s"
python3 bench/startup_overhead.py
python3 bench/startup_overhead.py
python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py tests/test_gpu_reporter.py 2>&1 | tail -4
video=bench/work/faces_1920x1080_${frames}.mp4
[ -f "$video" ] || python3 -m facefleet.samples tests/data "$video" --width 1920 --height 1080 --frames "$frames" >/dev/null
for layout in "1 2" "1 4" "1 8" "2 4" "4 2" "1 16"; do
  set -- $layout
  echo "ceiling processes=$1 chunks=$2: $(python3 bench/encode_ceiling.py "$video" --processes "$1" --chunks "$2")"
done
echo "ceiling superfast 1x8: $(python3 bench/encode_ceiling.py "$video" --processes 1 --chunks 8 --preset superfast)"
bash bench/compare_runs_gpu.sh "$frames" \
  "default|.|" "cpw4|.|--chunks-per-worker 4" "cpw8|.|--chunks-per-worker 8" \
  "share0.5 cpw4|.|--gpu-share 0.5 --chunks-per-worker 4" "share0.25|.|--gpu-share 0.25"
