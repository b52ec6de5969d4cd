#!/usr/bin/env bash
# Issue 7's levers on the GPU machine (after staging; PYTHONPATH must reach the deps):
#   bash bench/levers_gpu.sh tests     # the gpu pytest marker (fp16 vs fp32, TensorRT fallback, ...)
#   bash bench/levers_gpu.sh options   # bench/cuda_options.py: precision, cuDNN search, CUDA graphs per call
#   bash bench/levers_gpu.sh enhance   # enhance end to end: fp16 and layouts vs the defaults
#   bash bench/levers_gpu.sh enhance-defaults  # the enhance defaults (2 workers x 8 chunks) vs the old layout, and fp16
#   bash bench/levers_gpu.sh anonymize # anonymize vs deface with fp16 as a variant (deface importable by python3)
#   bash bench/levers_gpu.sh layouts   # anonymize 1080p x 1800: chunks per worker 4, 6, 8 and two workers per GPU
#   bash bench/levers_gpu.sh monitoring # bench/monitoring_overhead.py at 1080p: sampling on/off pairs and its own cost
# Results are copied to $OUT when set.
set -u
tag=${TAG:-h100}
case "${1:-}" in
  tests)
    python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py tests/test_gpu_reporter.py 2>&1 | tail -8 ;;
  options)
    timeout 560 python3 bench/cuda_options.py --tag "$tag" --enhancer-batch 16 2>&1 | tail -20 ;;
  enhance)
    timeout 580 python3 bench/enhance_e2e.py --tag "$tag-levers" --frames 1200 --batches 8,16 --repeat 5 --run-timeout 120 \
      --variant='--precision fp16' --variant='--gpu-share 0.5 --precision fp16' --variant='--gpu-share 0.25 --precision fp16' \
      --variant='--gpu-share 0.5 --chunks-per-worker 8' 2>&1 | grep -E "^\[|frames,|FAILED|failed|faces/s" | tail -25 ;;
  enhance-defaults)
    timeout 580 python3 bench/enhance_e2e.py --tag "$tag" --frames 1200 --batches 8,16 --repeat 5 --run-timeout 120 \
      --variant='--gpu-share 1 --chunks-per-worker 4' --variant='--precision fp16' \
      2>&1 | grep -E "^\[|frames,|FAILED|failed|faces/s" | tail -25 ;;
  anonymize)
    timeout 580 python3 bench/anonymize_vs_deface.py --width 1920 --height 1080 --frames 1800 --deface-python python3 \
      --tag "$tag-fp16" --variant="--precision fp16" 2>&1 | grep -vE "^\s*$" | tail -14 ;;
  layouts)
    bash bench/compare_runs_gpu.sh 1800 "default|.|" "cpw4|.|--chunks-per-worker 4" "cpw6|.|--chunks-per-worker 6" \
      "cpw8|.|--chunks-per-worker 8" "share0.5|.|--gpu-share 0.5 --chunks-per-worker 4" "default again|.|" ;;
  monitoring)
    timeout 580 python3 bench/monitoring_overhead.py --width 1920 --height 1080 --frames 600 --repeat 4 --tag "$tag" \
      2>&1 | grep -E "^\*\*|^\| [0-9]" | tail -20 ;;
  *) echo "usage: bash bench/levers_gpu.sh tests|options|enhance|enhance-defaults|anonymize|layouts|monitoring" >&2; exit 2 ;;
esac
[ -n "${OUT:-}" ] && cp bench/results/*"$tag"* "$OUT"/ 2>/dev/null
exit 0
