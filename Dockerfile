# syntax=docker/dockerfile:1
# One build, two images:
#   docker build --target producer -t dapr-bindings-keda/producer:0.1.0 .
#   docker build --target consumer -t dapr-bindings-keda/consumer:0.1.0 .
# cargo-chef builds the dependencies in their own layer, rebuilt only when Cargo.toml or Cargo.lock
# change. No system protoc is needed: build.rs uses a vendored one.

# Cargo.toml's rust-version, which is the toolchain .ci/run builds and tests with (tests/manifests/
# keeps the two equal). Bookworm, like the distroless runtime below, so the binaries link against
# the glibc they run with. cargo-chef publishes `latest-rust-<tag>` for the tags Docker's official
# rust image lists; once 1.95 leaves that list this tag stops receiving updates: raise
# rust-version, this line and the CI toolchain together.
ARG RUST_VERSION=1.95

# Base images are pinned by digest, `FROM name:tag@sha256:<digest>`: a rebuild of the same commit
# gets the same bytes, and an image changed behind its tag (both are rebuilt often) shows here as a
# change to review. tests/manifests/ fails on an unpinned FROM. To pin or update one where a
# registry is reachable, `docker buildx imagetools inspect <name:tag>` prints the tag's `Digest:`,
# that of its index, which covers every platform; put it after the tag, `@sha256:...`, and run
# the tests. The two below still await theirs
# (marked DIGEST): they were written where no registry could be reached, and no source to trust
# for these tags' digests could be found; tests/manifests/images.rs lists them as awaiting, and
# fails once one is pinned until it leaves that list.

# DIGEST: append @sha256:<digest of latest-rust-${RUST_VERSION}-slim-bookworm> (see above).
FROM lukemathwalker/cargo-chef:latest-rust-${RUST_VERSION}-slim-bookworm AS chef
WORKDIR /app

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /app/recipe.json recipe.json
RUN cargo chef cook --release --recipe-path recipe.json
COPY . .
RUN cargo build --release --locked -p producer -p consumer

# Runtime: glibc and CA certificates, no shell. The user is numeric (distroless's nonroot, 65532) so
# the kubelet can check the pods' runAsNonRoot.
# DIGEST: append @sha256:<digest of cc-debian12:nonroot> here and on the consumer's FROM below.
FROM gcr.io/distroless/cc-debian12:nonroot AS producer
COPY --from=builder /app/target/release/producer /usr/local/bin/producer
USER 65532:65532
# PORT's default: REST and gRPC.
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/producer"]

# DIGEST: the same digest as the producer's FROM.
FROM gcr.io/distroless/cc-debian12:nonroot AS consumer
COPY --from=builder /app/target/release/consumer /usr/local/bin/consumer
USER 65532:65532
# APP_PORT's default: AppCallback and the gRPC health checks.
EXPOSE 50051
ENTRYPOINT ["/usr/local/bin/consumer"]
