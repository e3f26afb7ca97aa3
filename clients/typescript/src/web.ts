// The browser's side: the same JobService over gRPC-Web (connect-web), for pages that submit
// and watch jobs. The server must list the page's origin in CONVEYOR_CORS_ORIGINS.

import { createClient, type Client } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";

import { bearer } from "./bearer.js";
import { JobService } from "./gen/conveyor/v1/jobs_pb.js";

export * from "./gen/conveyor/v1/jobs_pb.js";

/** A JobService client for a page: `baseUrl` is the server (`https://conveyor.example.com`),
 *  `token` a bearer credential if the server wants one. */
export function jobService(baseUrl: string, token?: string): Client<typeof JobService> {
  const transport = createGrpcWebTransport({
    baseUrl,
    interceptors: token ? [bearer(token)] : [],
  });
  return createClient(JobService, transport);
}
