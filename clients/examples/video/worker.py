"""The render worker of the video pipeline this replaces, in Python: stages with progress
(bundle 0-30, composition 30-40, render 40-85, upload 85-95, cleanup 95-100), the rendered
video uploaded as the job's artifact. `python3 worker.py` (CONVEYOR_ADDR names the server), with
the package installed (`pip install ./clients/python`). SIGTERM or Ctrl-C lets a running render
finish and be reported before it exits; a render assigned meanwhile goes back to the queue, its
attempt not counted."""

import json
import os
import tempfile
import time

from conveyor import Worker

STEP = float(os.environ.get("STEP_SECONDS", "0.2"))
worker = Worker(queues=["render"], concurrency=3)


@worker.job("render")
def render(job, progress):
    weather = job.json()
    folder = tempfile.mkdtemp(prefix="render-")
    progress(0, "bundle", "collecting assets")
    for pct in (10, 20, 30):
        time.sleep(STEP)
        progress(pct, "bundle", f"bundled {pct}%")
    progress(35, "composition", f"{weather['city']}: {weather['forecast']}")
    time.sleep(STEP)
    progress(40, "composition", "scenes laid out")
    video = os.path.join(folder, "weather.mp4")
    with open(video, "w") as f:
        f.write(json.dumps(weather))
    for frame in range(1, 6):
        time.sleep(STEP)
        progress(40 + frame * 9, "render", f"frame {frame}/5")
    progress(85, "upload", "weather.mp4")
    job.upload("weather.mp4", video, "video/mp4")
    progress(95, "cleanup", "removing scratch files")
    os.remove(video)
    os.rmdir(folder)
    return {"video": "weather.mp4", "city": weather["city"]}


if __name__ == "__main__":
    worker.run()
