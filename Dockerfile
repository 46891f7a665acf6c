# Build stage: compile the release binary.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY crates ./crates
COPY src ./src
COPY migrations ./migrations
# Descriptions of the compile-time-checked queries: no database at build time.
COPY .sqlx ./.sqlx
ENV SQLX_OFFLINE=true
# Declared in Cargo.toml, so the manifest needs it even for the binary.
COPY benches ./benches
RUN cargo build --release --locked --bin sinkgate

# Runtime stage: a slim image with a non-root user.
FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home sinkgate
COPY --from=build /src/target/release/sinkgate /usr/local/bin/sinkgate
USER sinkgate
ENV SINKGATE_LISTEN=0.0.0.0:8080
# Listening on every interface: health, metrics (which name every job) and
# the API docs need the admin token too.
ENV SINKGATE_PROTECT_OPERATIONS=true
EXPOSE 8080
ENTRYPOINT ["sinkgate"]
CMD ["serve"]
