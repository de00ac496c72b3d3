# syntax=docker/dockerfile:1
# forge-vram-proxy: build with the Rust toolchain, run on a small glibc image as non-root.
# NVML (libnvidia-ml.so) is a glibc library the NVIDIA container runtime mounts at run time.

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
# The same build step .ci/run runs.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin forge-vram-proxy \
    && cp target/release/forge-vram-proxy /usr/local/bin/forge-vram-proxy

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /usr/local/bin/forge-vram-proxy /usr/local/bin/forge-vram-proxy
COPY config/forge-vram-proxy.toml /etc/forge-vram-proxy/config.toml
# The NVIDIA runtime mounts the driver's NVML library ("utility") for the visible GPUs.
ENV NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=utility \
    FORGE_VRAM_PROXY_CONFIG=/etc/forge-vram-proxy/config.toml \
    FORGE_VRAM_PROXY_LISTEN=0.0.0.0:7870
# distroless "nonroot"
USER 65532:65532
EXPOSE 7870
HEALTHCHECK --interval=15s --timeout=5s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/forge-vram-proxy", "health"]
ENTRYPOINT ["/usr/local/bin/forge-vram-proxy"]
