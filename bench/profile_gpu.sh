#!/usr/bin/env bash
# Settings sweep on a GPU machine: bench/profile_chunks.py over one generated 1080p video.
# Usage: bash bench/profile_gpu.sh [FRAMES]   (PYTHONPATH must reach facefleet and its deps)
set -u
frames=${1:-300}
video=bench/work/faces_1920x1080_${frames}.mp4
[ -f "$video" ] || python3 -m facefleet.samples tests/data "$video" --width 1920 --height 1080 --frames "$frames"
run() { echo "== $*"; python3 bench/profile_chunks.py "$video" "$@" 2>&1 | tail -1; }
run --concurrency 1
run --concurrency 2
run --concurrency 4
run --concurrency 4 --cv2-threads 2
run --concurrency 4 --batch-size 32
run --concurrency 6 --cv2-threads 2
run --concurrency 2 --provider cpu --threads 8
