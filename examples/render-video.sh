#!/bin/sh
# A stand-in for a video pipeline's render step, run once per job by
# `conveyor worker --queue render -- sh examples/render-video.sh`. It reads the job's footage
# from $CONVEYOR_INPUT_DIR (uploaded with `conveyor submit --input FILE`), "renders" in stages
# with `PROGRESS <percent> <stage> <message>` lines, and leaves the video and a thumbnail in
# $CONVEYOR_OUTPUT_DIR; the worker uploads them as the job's artifacts (its `upload` stage,
# 85-100%) and `conveyor get ID --download DIR` fetches them.
set -e
payload=$(cat)
stage() { echo "PROGRESS $1 $2 $3"; sleep 0.2; }
stage 10 bundle "collecting assets"
stage 30 bundle "assets ready"
stage 40 composition "laying out scenes"
video="$CONVEYOR_OUTPUT_DIR/video.mp4"
echo "rendered from $payload" > "$video"
for footage in "$CONVEYOR_INPUT_DIR"/*; do
  if [ -f "$footage" ]; then cat "$footage" >> "$video"; fi
done
for pct in 55 70 85; do stage "$pct" render "frame $pct/85"; done
echo "thumbnail of $CONVEYOR_JOB_ID" > "$CONVEYOR_OUTPUT_DIR/thumbnail.png"
echo "RESULT {\"video\":\"video.mp4\",\"thumbnail\":\"thumbnail.png\"}"
