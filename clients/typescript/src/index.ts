// @conveyor/client: the generated messages and services, a Node client, and a Node worker.
export * from "./gen/conveyor/v1/jobs_pb.js";
export * from "./gen/conveyor/v1/workers_pb.js";
export * from "./client.js";
export { Fatal, Job, Worker, type Handler, type RunOptions, type WorkerOptions } from "./worker.js";
