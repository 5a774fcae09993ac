# A Docker engine for kiln's agents in deploy/compose, made from the host's
# Debian packages (docker.io, containerd, runc): dockerd and what it runs,
# each with the shared libraries ldd names, FROM scratch. Nothing comes
# from a public registry. scripts/images.sh assembles the context:
#   rootfs/usr/bin/{dockerd,containerd,containerd-shim-runc-v2,runc,docker-init}
#   rootfs/lib/..., rootfs/lib64/...     their shared libraries
#   rootfs/etc/passwd, rootfs/etc/group, rootfs/etc/ssl/certs/ca-certificates.crt
#   rootfs/tmp/, rootfs/run/, rootfs/var/lib/docker/
#
# The engine runs as root with the capabilities of a privileged container
# (an engine needs them; the agents beside it do not). Its flags come from
# deploy/compose/compose.yaml: a unix socket in a volume shared with one
# agent, group 65532 so the nonroot agent may use it, a bridge without
# iptables rules (build steps reach nothing outside the engine's
# container), data on a volume.
FROM scratch
COPY rootfs/ /
LABEL org.opencontainers.image.title=kiln-engine \
      org.opencontainers.image.source=https://github.com/kilnbuild/kiln
ENV PATH=/usr/bin:/usr/sbin:/bin:/sbin
ENV BUILDKIT_STEP_LOG_MAX_SIZE=1073741824 BUILDKIT_STEP_LOG_MAX_SPEED=1073741824
ENTRYPOINT ["/usr/bin/dockerd"]
