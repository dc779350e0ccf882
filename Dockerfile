# syntax=docker/dockerfile:1
FROM rust:1.85-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends cmake && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
RUN cargo build --release --locked --bin gatehouse --bin gatehouse-echo

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home /var/lib/gatehouse --create-home gatehouse
COPY --from=build /src/target/release/gatehouse /src/target/release/gatehouse-echo /usr/local/bin/
# The production default: admin on loopback, secrets only from the environment
# (GATEHOUSE_ADMIN_TOKEN is required). The demo config is not in the image.
COPY conf/gatehouse.yaml /etc/gatehouse/gatehouse.yaml
ENV GATEHOUSE_LISTEN=0.0.0.0:8080
USER gatehouse
WORKDIR /var/lib/gatehouse
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=2s --retries=3 CMD curl -fsS http://127.0.0.1:9901/healthz || exit 1
ENTRYPOINT ["/usr/local/bin/gatehouse"]
CMD ["run", "-c", "/etc/gatehouse/gatehouse.yaml"]
