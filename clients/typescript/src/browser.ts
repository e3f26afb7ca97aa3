// What `@conveyor/client/web` exports: the gRPC-Web client (./web.ts) and the submit helpers that
// key and retry (./submit.ts). The dashboard bundles ./web.ts alone, so its committed build (which
// the server embeds) does not change with the helpers.
export * from "./web.js";
export { submitJob, submitJobs, type JobServiceClient, type RetryOptions, type SubmitInit, type SubmitOptions } from "./submit.js";
