# A registry for deploy/compose, made from the host's Debian package
# docker-registry (the distribution registry) and the shared libraries it
# loads, FROM scratch: nothing comes from a public registry.
# scripts/images.sh assembles the context:
#   rootfs/usr/bin/docker-registry, rootfs/lib/..., rootfs/lib64/...
#   rootfs/etc/docker/registry/config.yml   plain HTTP on :5000, storage on
#                                           /home/nonroot/registry
#   rootfs/etc/passwd, rootfs/etc/group, rootfs/etc/ssl/certs/ca-certificates.crt
FROM scratch
COPY rootfs/ /
COPY --chown=65532:65532 rootfs/home/ /home/
LABEL org.opencontainers.image.title=kiln-registry \
      org.opencontainers.image.source=https://github.com/kilnbuild/kiln
ENV HOME=/home/nonroot
USER 65532:65532
EXPOSE 5000
ENTRYPOINT ["/usr/bin/docker-registry"]
CMD ["serve", "/etc/docker/registry/config.yml"]
