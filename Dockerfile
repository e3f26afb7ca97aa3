# syntax=docker/dockerfile:1.7
# The Conveyor image: one static-ish binary (glibc, rustls; no OpenSSL) at /usr/local/bin/conveyor
# on distroless, as uid 65532, with a read-only root filesystem in mind. `serve` by default.
#
#   docker build -t registry.example.com/conveyor:0.1.0 .
#
# Worker images copy the binary out of it:
#   COPY --from=registry.example.com/conveyor:0.1.0 /usr/local/bin/conveyor /usr/local/bin/conveyor

# Builder and runtime share Debian 12 (bookworm), so the binary's glibc is the runtime's.
ARG RUST_IMAGE=rust:1.95.0-slim-bookworm
ARG NODE_IMAGE=node:22.12.0-bookworm-slim
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

# The dashboard's files are compiled into the binary (include_str!). Build them from source here,
# with the esbuild pinned by the package's lock file, so the image never depends on a dist/ left
# in the working tree.
FROM ${NODE_IMAGE} AS dashboard
WORKDIR /src/clients/typescript
COPY clients/typescript/package.json clients/typescript/package-lock.json ./
RUN --mount=type=cache,target=/root/.npm \
    npm ci --no-fund --no-audit --loglevel=error
COPY clients/typescript/ ./
RUN node dashboard/build.mjs

FROM ${RUST_IMAGE} AS build
WORKDIR /src
# build.rs compiles proto/ with the protoc that protoc-bin-vendored ships: no protobuf-compiler.
# ring and the bundled SQLite need only the C compiler the image has.
COPY Cargo.toml Cargo.lock build.rs ./
COPY migrations/ migrations/
COPY proto/ proto/
COPY examples/ examples/
COPY src/ src/
COPY --from=dashboard /src/clients/typescript/dashboard/dist/ clients/typescript/dashboard/dist/
# target/ is a cache mount, so the binary is copied out of it within the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin conveyor \
 && install -D -m 0755 target/release/conveyor /out/conveyor

FROM ${RUNTIME_IMAGE}
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG SOURCE=""
LABEL org.opencontainers.image.title="conveyor" \
      org.opencontainers.image.description="Job orchestration over gRPC: Redis lease scheduler, remote workers, live progress." \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}"
COPY --from=build /out/conveyor /usr/local/bin/conveyor
# gRPC (+ gRPC-Web and /dashboard/) and HTTP (/metrics, /healthz, /readyz, /drain).
EXPOSE 50051 9090
# `serve` writes nothing to disk, so the root filesystem can be read-only. The listeners must
# not be loopback in a container; the server's own default is 127.0.0.1.
ENV CONVEYOR_LISTEN=0.0.0.0:50051 \
    CONVEYOR_HTTP_LISTEN=0.0.0.0:9090
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/conveyor"]
CMD ["serve"]
