# Mirrors the README: build the release binary, run `reembed serve` with data on a volume.
#   docker build -t reembed .
#   docker run -p 8080:8080 -v reembed-data:/var/lib/reembed/data \
#              -e REEMBED_API_TOKEN=... reembed
# Listening beyond loopback needs an API token (or --insecure behind an authenticating proxy).
FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked

FROM debian:bookworm-slim
RUN useradd --system --create-home --home-dir /var/lib/reembed reembed
COPY --from=build /src/target/release/reembed /usr/local/bin/reembed
USER reembed
VOLUME ["/var/lib/reembed/data"]
ENV REEMBED_LISTEN=0.0.0.0:8080 \
    REEMBED_DATA_DIR=/var/lib/reembed/data
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/reembed"]
CMD ["serve"]
