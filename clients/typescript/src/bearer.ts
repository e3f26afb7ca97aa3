// The credential every call carries, for the Node and the browser clients alike.

import type { Interceptor } from "@connectrpc/connect";

/** Adds `authorization: Bearer <key>` to every call. */
export function bearer(key: string): Interceptor {
  return (next) => async (req) => {
    req.header.set("authorization", `Bearer ${key}`);
    return next(req);
  };
}
