# The kiln CLI image that CI jobs run in (templates/kiln-build.yml,
# examples/gitlab-ci.yml): the static kiln binary, CA certificates, the user
# nonroot (65532) and a static busybox for the shell a CI runner needs to
# run a job's script — nothing else, nothing pulled from a public registry.
#
# The build context is the one scripts/images.sh assembles for every image
# (see Dockerfile), plus cli/busybox, the host's static busybox:
#
#   scripts/images.sh kiln           # builds this with kiln itself
#
# Run it as `docker run IMAGE build …` (the entrypoint is kiln), or as a CI
# job's image with the entrypoint emptied (GitLab: entrypoint: [""]) so the
# runner starts /bin/sh. DOCKER_CONFIG points into the user's home: a job
# writes the registry credentials kiln build hands the farm there.
FROM scratch
COPY rootfs/etc/ /etc/
COPY --chown=65532:65532 rootfs/home/ /home/
COPY --chown=65532:65532 rootfs/tmp/ /tmp/
COPY cli/busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
COPY bin/kiln /usr/local/bin/kiln
LABEL org.opencontainers.image.title=kiln \
      org.opencontainers.image.description="The kiln CLI, for CI jobs that build on a kiln farm" \
      org.opencontainers.image.source=https://github.com/kilnbuild/kiln
ENV PATH=/usr/local/bin:/bin \
    HOME=/home/nonroot \
    DOCKER_CONFIG=/home/nonroot/.docker
WORKDIR /home/nonroot
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/kiln"]
