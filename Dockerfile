# hubbub: one static-ish binary, a small runtime image, a non-root user.
#
#   docker build -t hubbub .
#   docker run -p 8080:8080 hubbub                      # one node, built-in defaults
#   docker run -p 8080:8080 -v $PWD/cluster.toml:/etc/hubbub/hubbub.toml:ro \
#     -e HUBBUB_CONFIG=/etc/hubbub/hubbub.toml hubbub   # a config file
#
# Configuration: HUBBUB_CONFIG names a TOML file (see docs/configuration.md);
# HUBBUB_SECTION__KEY variables override it (HUBBUB_CLUSTER__COOKIE, HUBBUB_AUTH__SECRET
# for the secrets). The image listens on 0.0.0.0:8080 (HTTP and WebSocket) and
# 0.0.0.0:4370 (cluster peers). Not built on the project's own machines (they have no
# container engine); kept simple and standard for that reason.

# ---- build ----
FROM rust:1-bookworm AS build
WORKDIR /src
# cmake and clang: aws-lc-sys (TLS between nodes) builds C code.
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake clang \
 && rm -rf /var/lib/apt/lists/*
COPY . .
RUN cargo build --release --locked --bin hubbub \
 && strip target/release/hubbub

# ---- run ----
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin hubbub \
 && mkdir -p /var/lib/hubbub && chown hubbub /var/lib/hubbub
COPY --from=build /src/target/release/hubbub /usr/local/bin/hubbub
USER hubbub
# The room logs (storage.dir): mount a volume here, or history is lost with the
# container.
ENV HUBBUB_NODE__HTTP_ADDR=0.0.0.0:8080 \
    HUBBUB_CLUSTER__BIND=0.0.0.0:4370 \
    HUBBUB_STORAGE__DIR=/var/lib/hubbub \
    HUBBUB_LOG__FORMAT=json
VOLUME /var/lib/hubbub
EXPOSE 8080 4370
# Alive: /healthz answers while the process serves HTTP. (Readiness for a load
# balancer is /readyz, which is 503 while draining or without a cluster quorum.)
# (Plain HTTP, or HTTPS with the node's own certificate when [http.tls] is set.)
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD curl -fsS http://127.0.0.1:8080/healthz || curl -fsSk https://127.0.0.1:8080/healthz || exit 1
# SIGTERM drains: goodbye to clients, leave the cluster, exit 0 within
# shutdown.timeout_secs (30 s by default; give `docker stop -t` at least that).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/hubbub"]
CMD ["serve"]
