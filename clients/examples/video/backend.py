"""The backend of the video pipeline: submits a weather video render for a premium customer,
answers at once (the "202"), then follows the job to its end with a progress bar and prints the
video's download link. `python3 backend.py` (CONVEYOR_ADDR names the server), with the package
installed (`pip install ./clients/python`)."""

import os
import sys

from conveyor import Client
from conveyor.v1 import jobs_pb2 as pb

with Client() as client:
    job = client.submit("render", {"city": "Lisbon", "forecast": "sunny, 24°C"},
                        tier="premium", labels={"user": "42"})
    print(f"accepted {job.id}")
    # The same bar in a browser: the dashboard the server serves.
    address = os.environ.get("CONVEYOR_ADDR", "127.0.0.1:50051")
    print(f"watch it in a browser: http://{address}/dashboard/#job={job.id}")
    for event in client.watch(job.id):
        progress = event.job.progress if event.HasField("job") else event.progress
        if event.kind == pb.JobEvent.KIND_PROGRESS or event.HasField("job"):
            bar = "#" * int(progress.percent / 5)
            print(f"[{bar:<20}] {progress.percent:5.1f}%  {progress.stage}  {progress.message}")
        if event.state in (pb.JOB_STATE_SUCCEEDED, pb.JOB_STATE_FAILED, pb.JOB_STATE_CANCELLED):
            print(pb.JobState.Name(event.state))
    done = client.get(job.id)
    if done.state != pb.JOB_STATE_SUCCEEDED:
        sys.exit(f"failed: {done.error}")
    for artifact in done.artifacts:
        print(f"{artifact.name} ({artifact.size} bytes): {client.artifact_url(job.id, artifact.name)}")
