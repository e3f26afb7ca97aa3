"""Conveyor's Python client and worker: `Client` submits and watches jobs, `Worker` runs them."""

from conveyor.client import Client, channel
from conveyor.worker import Fatal, Job, Worker

__all__ = ["Client", "Worker", "Job", "Fatal", "channel"]
