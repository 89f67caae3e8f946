# Sandbox ("pause") image for the e2e node's containerd (CRI sandbox_image): no registry is reachable, so it
# is built on the local base. PID 1 sleeps until SIGTERM/SIGINT, then exits 0 (a plain `sleep` as PID 1
# would ignore SIGTERM). Built by scripts/build_images.sh as localhost/kestrel-pause:<version>.
ARG BASE=debian:bookworm-slim
FROM ${BASE}
USER 65535:65535
ENTRYPOINT ["/bin/sh", "-c", "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait $!; done"]
