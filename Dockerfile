# syntax=docker/dockerfile:1
# certgate: multi-stage build, small non-root runtime image.
#
#   docker build -t certgate .
#   docker run -p 8443:8443 -p 9090:9090 \
#     -v $PWD/tls:/etc/certgate/tls:ro -v $PWD/ca:/etc/certgate/ca:ro \
#     -v $PWD/secrets:/etc/certgate/secrets:ro -v certgate-state:/var/lib/certgate certgate
#
# The state volume must hold a store: append
# `run --config /etc/certgate/certgate.yaml --create-store` on the first start only (a
# missing store file is refused, so that a lost volume never forgets revocations).
#
# Mount your own /etc/certgate/certgate.yaml to change anything; the built-in one is
# config/docker.yaml from this repository.

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY config ./config
COPY benches ./benches
RUN cargo build --release --locked --bin certgate \
 && strip target/release/certgate

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 certgate \
 && useradd --system --uid 10001 --gid certgate --home-dir /var/lib/certgate --shell /usr/sbin/nologin certgate \
 && mkdir -p /etc/certgate /var/lib/certgate \
 && chown certgate:certgate /var/lib/certgate \
 && chmod 0700 /var/lib/certgate
COPY --from=build /src/target/release/certgate /usr/local/bin/certgate
COPY config/docker.yaml /etc/certgate/certgate.yaml
USER certgate:certgate
WORKDIR /var/lib/certgate
VOLUME ["/var/lib/certgate"]
EXPOSE 8443 9090
ENTRYPOINT ["/usr/local/bin/certgate"]
CMD ["run", "--config", "/etc/certgate/certgate.yaml"]
