#!/bin/sh
# A stand-in for a video render, run by `conveyor worker -- sh examples/render.sh` once per job.
# The job's payload arrives on stdin; progress goes to stdout as `PROGRESS <percent> [stage] [message]`;
# the last line `RESULT <json>` is the job's result. A non-zero exit fails the attempt (retried).
payload=$(cat)
frames=20
i=1
while [ "$i" -le "$frames" ]; do
  sleep 0.15
  echo "PROGRESS $((i * 100 / frames)) render frame $i/$frames"
  i=$((i + 1))
done
echo "RESULT {\"frames\":$frames,\"job\":\"$CONVEYOR_JOB_ID\",\"input\":$payload}"
