#!/usr/bin/env bash
# facefleet run over one generated 1080p video with several option sets, each timed from
# process start to exit; optionally against another source tree (SRC=dir: its facefleet
# package is imported instead of this one), to find where a speed change came from.
# Usage: bash bench/compare_runs_gpu.sh FRAMES "LABEL|SRC|OPTIONS" ...
#   SRC "." is this checkout. PYTHONPATH must reach facefleet's dependencies.
set -u
frames=$1; shift
video=bench/work/faces_1920x1080_${frames}.mp4
[ -f "$video" ] || python3 -m facefleet.samples tests/data "$video" --width 1920 --height 1080 --frames "$frames" >/dev/null
deps=${PYTHONPATH:-}
for spec in "$@"; do
  IFS='|' read -r label src opts <<<"$spec"
  start=$(date +%s.%N)
  # shellcheck disable=SC2086
  line=$(PYTHONPATH="$src:$deps" python3 -m facefleet run "$video" -o /tmp/compare_out.mp4 -q $opts 2>&1 | grep -E "^ok|FAILED|rror" | tail -1)
  end=$(date +%s.%N)
  echo "[$label] wall $(python3 -c "print(round($end - $start, 2))") s :: $line"
done
