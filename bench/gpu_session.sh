#!/usr/bin/env bash
# The GPU machine's measurements for the README, in one go (after staging; PYTHONPATH must
# reach the deps, deface 1.5.0 importable by python3): the gpu tests, detector
# preprocessing host vs GPU graph, a full run with each, facefleet vs deface with the
# machine's decode+encode ceiling. Results are copied to $OUT when set.
# Usage: bash bench/gpu_session.sh [FRAMES]
set -u
frames=${1:-1800}
python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py tests/test_gpu_reporter.py 2>&1 | tail -6
python3 bench/detect_preprocess.py --tag h100 2>&1 | tail -3
video=bench/work/faces_1920x1080_${frames}.mp4
[ -f "$video" ] || python3 -m facefleet.samples tests/data "$video" --width 1920 --height 1080 --frames "$frames" >/dev/null
FACEFLEET_DETECT_PREPROCESS=host bash bench/compare_runs_gpu.sh "$frames" "host preprocessing|.|"
bash bench/compare_runs_gpu.sh "$frames" "graph preprocessing (default)|.|"
python3 bench/anonymize_vs_deface.py --width 1920 --height 1080 --frames "$frames" --deface-python python3 --tag h100 \
  --variant="--output-video-preset ultrafast" 2>&1 | grep -vE "^\s*$" | tail -12
[ -n "${OUT:-}" ] && cp bench/results/*h100* "$OUT"/
