# quorumkv container image: a Rust build stage and a small Debian runtime.
#
#   docker build -t quorumkv .
#
# compiles from source in the official Rust image (RocksDB's C++ included,
# ~15 min on 2 cores). To package a binary already built on a compatible
# Debian 12 host instead (what the test run does, so RocksDB is compiled
# once), pass it from inside the build context:
#
#   docker build --build-arg PREBUILT=target/docker/quorumkv \
#                --build-arg BUILD_IMAGE=debian:bookworm-slim -t quorumkv .
ARG BUILD_IMAGE=rust:1.95-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${BUILD_IMAGE} AS build
ARG PREBUILT=
WORKDIR /src
COPY . .
RUN set -eu; \
    if [ -n "$PREBUILT" ]; then \
      install -D -m 0755 "$PREBUILT" /out/quorumkv; \
    else \
      apt-get update && apt-get install -y --no-install-recommends libclang-dev clang; \
      cargo build --release --locked --bin quorumkv; \
      install -D -m 0755 target/release/quorumkv /out/quorumkv; \
    fi

FROM ${RUNTIME_IMAGE}
# A fixed non-root uid/gid (the Kubernetes manifests run as 10001 too).
# /data and /certs belong to it, so fresh named volumes do as well.
RUN groupadd --system --gid 10001 quorumkv \
 && useradd --system --uid 10001 --gid 10001 --home-dir /data --no-create-home --shell /usr/sbin/nologin quorumkv \
 && mkdir -p /data /certs \
 && chown quorumkv:quorumkv /data /certs
COPY --from=build /out/quorumkv /usr/local/bin/quorumkv
# Every config key is a QUORUMKV_* variable; these are the image's defaults.
# Per node: QUORUMKV_NODE_ID, QUORUMKV_TLS_CERT, QUORUMKV_TLS_KEY,
# QUORUMKV_MEMBERS (see docker-compose.yml).
ENV QUORUMKV_CLIENT_LISTEN=0.0.0.0:8443 \
    QUORUMKV_PEER_LISTEN=0.0.0.0:9443 \
    QUORUMKV_DATA_DIR=/data \
    QUORUMKV_TLS_CA=/certs/ca.pem \
    QUORUMKV_CACERT=/certs/ca.pem \
    QUORUMKV_URL=https://127.0.0.1:8443 \
    QUORUMKV_LOG_FORMAT=json
VOLUME ["/data"]
EXPOSE 8443 9443
USER 10001:10001
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 CMD ["quorumkv", "health"]
# SIGTERM: stop accepting, drain in-flight requests (at most 8 s), close RocksDB.
STOPSIGNAL SIGTERM
ENTRYPOINT ["quorumkv"]
CMD ["serve"]
