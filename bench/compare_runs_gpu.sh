#!/usr/bin/env bash
# facefleet run over one generated 1080p video with several option sets, each timed from
# process start to exit and kept in its own run store, whose timeline (bench/job_timeline.py)
# follows: job fps, the chunks' own fps and how many ran at once. Optionally against another
# source tree (SRC=dir holding a facefleet package, e.g. `git archive BASE facefleet`): the
# run starts in that directory, so `python -m` imports its facefleet (the working directory
# comes first on sys.path, before PYTHONPATH) and Ray's workers do too.
# Usage: bash bench/compare_runs_gpu.sh FRAMES "LABEL|SRC|OPTIONS" ...
#   SRC "." is this checkout. PYTHONPATH must reach facefleet's dependencies.
set -u
frames=$1; shift
root=$PWD
video=$root/bench/work/faces_1920x1080_${frames}.mp4
[ -f "$video" ] || python3 -m facefleet.samples tests/data "$video" --width 1920 --height 1080 --frames "$frames" >/dev/null
deps=${PYTHONPATH:-}
for spec in "$@"; do
  IFS='|' read -r label src opts <<<"$spec"
  store=/tmp/compare_store; rm -rf "$store"
  start=$(date +%s.%N)
  # shellcheck disable=SC2086
  line=$(cd "$src" && PYTHONPATH="$PWD:$deps" python3 -m facefleet run "$video" -o /tmp/compare_out.mp4 -q \
    --state-dir "$store" $opts 2>&1 | grep -E "^ok|FAILED|rror" | tail -1)
  end=$(date +%s.%N)
  echo "[$label] wall $(python3 -c "print(round($end - $start, 2))") s :: $line"
  python3 bench/job_timeline.py "$store" | head -1
done
