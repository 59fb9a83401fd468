# syntax=docker/dockerfile:1
# certgate: multi-stage build, small non-root runtime image.
#
# Build (the commit shown by `certgate --version` and certgate_build_info; the build
# context has no .git, so without the argument it says "unknown"):
#
#   docker build --build-arg CERTGATE_COMMIT=$(git rev-parse --short=12 HEAD) -t certgate .
#
# Layout inside the image: the one `certgate init --dir X` writes, rooted at /etc/certgate.
#
#   /etc/certgate/config/certgate.yaml   built in: config/docker.yaml of this repository
#   /etc/certgate/certs/                 server.pem, server.key, enroll-ca.pem, enroll-ca.key
#                                        (and server-ca.pem: not read, harmless)
#   /etc/certgate/secrets/admin-token
#   /var/lib/certgate/                   volume: the embedded store, certgate.db
#
# The built-in config names ../certs/… and ../secrets/… (relative to its own folder), so
# either mount an init'ed folder's certs/ and secrets/ and keep the built-in config:
#
#   certgate init --dir ./gw          # or put your real certificate and CA in ./gw/certs
#   sudo chown -R 10001:10001 ./gw/certs ./gw/secrets      # see "Key files" below
#   docker run --stop-timeout 45 -p 8443:8443 -p 9090:9090 \
#     -v $PWD/gw/certs:/etc/certgate/certs:ro -v $PWD/gw/secrets:/etc/certgate/secrets:ro \
#     -v certgate-state:/var/lib/certgate \
#     -e CERTGATE_UPSTREAM_URL=http://app.internal:8080 \
#     -e CERTGATE_PUBLIC_URL=https://gateway.example.com \
#     certgate run --create-store
#
# or mount the whole folder (-v $PWD/gw:/etc/certgate:ro): then its own
# config/certgate.yaml is used. Edit it first: state.path /var/lib/certgate/certgate.db
# (the folder is read-only in the container) and metrics.listen "0.0.0.0:9090"; copying
# config/docker.yaml over it is a good start.
#
# First start only: `run --create-store` creates the embedded store in the volume. Leave
# the flag out afterwards: a missing store file then stops certgate instead of silently
# forgetting every revocation (a lost or unmounted volume). With state.backend: redis there
# is no store file and no flag.
#
# Key files: `certgate init` writes private keys and the token with mode 0600, owned by
# whoever ran it. The container runs as uid 10001 (user certgate) and must be able to read
# them: `chown 10001:10001` them on the host (0600 or 0640 stay as they are), or run the
# container as their owner with `--user $(id -u):$(id -g)` (then the state volume must be
# writable by that uid too: bind-mount a folder that user owns). Keys readable by others
# (o+r) are refused at start.
#
# Environment:
#   CERTGATE_CONFIG        the config file (default here /etc/certgate/config/certgate.yaml)
#   CERTGATE_UPSTREAM_URL  overrides upstream.url of the file
#   CERTGATE_PUBLIC_URL    overrides enrollment.public_url of the file
#   CERTGATE_LOG           overrides log.level (a tracing filter, e.g. certgate=debug)
#
# Ports: 8443 TLS (the gateway), 9090 /metrics, /healthz and /readyz. The admin API stays
# on the container's loopback: `docker exec CONTAINER certgate admin status alice`.
#
# Stopping: certgate drains for shutdown.drain_delay + shutdown.timeout (2s + 30s by
# default); docker's default stop timeout is 10s, hence --stop-timeout 45 (compose:
# stop_grace_period: 45s).

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
# Everything the build reads: the manifest and lock file, build.rs (the commit), the
# sources, config/ (src/demo.rs embeds config/certgate.yaml as the `init` template) and
# benches/ (Cargo.toml declares bench targets; cargo refuses a manifest whose targets are
# missing, even when building only the binary).
COPY Cargo.toml Cargo.lock build.rs ./
COPY src ./src
# The enrollment page's script, compiled into the binary (assets/enroll/build.sh makes it).
COPY assets/enroll/dist ./assets/enroll/dist
COPY config ./config
COPY benches ./benches
# Read by build.rs; empty means "ask git", which the context lacks (.dockerignore), so
# the commit is then "unknown".
ARG CERTGATE_COMMIT=""
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    CERTGATE_COMMIT="$CERTGATE_COMMIT" cargo build --release --locked --bin certgate \
 && strip -o /certgate target/release/certgate

FROM debian:bookworm-slim
# ca-certificates: an https:// upstream or rediss:// Redis is verified against the system
# roots (SSL_CERT_FILE is honoured).
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 certgate \
 && useradd --system --uid 10001 --gid certgate --home-dir /var/lib/certgate --shell /usr/sbin/nologin certgate \
 && mkdir -p /etc/certgate/config /etc/certgate/certs /etc/certgate/secrets /var/lib/certgate \
 && chown certgate:certgate /var/lib/certgate \
 && chmod 0700 /var/lib/certgate
COPY --from=build /certgate /usr/local/bin/certgate
COPY config/docker.yaml /etc/certgate/config/certgate.yaml
ENV CERTGATE_CONFIG=/etc/certgate/config/certgate.yaml
USER certgate:certgate
WORKDIR /var/lib/certgate
VOLUME ["/var/lib/certgate"]
EXPOSE 8443 9090
STOPSIGNAL SIGTERM
# `certgate health` reads the config and GETs /readyz on metrics.listen: 0 when ready.
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
  CMD ["/usr/local/bin/certgate", "health"]
ENTRYPOINT ["/usr/local/bin/certgate"]
CMD ["run"]
