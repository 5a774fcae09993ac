#!/usr/bin/env bash
# frontend-image.sh makes a BuildKit Dockerfile frontend image that the
# engine can use with `# syntax=IMAGE` without Docker Hub, and prints its
# reference on the last line of stdout, e.g.
#
#   127.0.0.1:5000/kiln/dockerfile:v0.34.2
#
# Docker 20.10's built-in Dockerfile frontend (dockerfile 1.2) has RUN
# --mount but no heredocs; a newer frontend run as a gateway frontend has
# them. docker/dockerfile:1.x images are this same program: BuildKit's
# ./frontend/dockerfile/cmd/dockerfile-frontend, a static binary in an image
# FROM scratch. This script builds it from source through the Go module proxy
# (in a throw-away module, so the project's go.mod files stay untouched),
# caches the binary by version, packages it with the classic builder and
# pushes it to the local registry. When the registry already has the image it
# does nothing else.
#
# Environment:
#   KILN_FRONTEND_VERSION  BuildKit module version to build (default below)
#   KILN_DEV_REGISTRY      registry to push to (default 127.0.0.1:5000)
#   KILN_FRONTEND_REPO     repository in it (default kiln/dockerfile)
#   KILN_DEV_CACHE         where built binaries are kept (default
#                          /var/lib/kiln-dev/cache as root, else
#                          $XDG_CACHE_HOME/kiln-dev)
#
# It needs go, docker and a registry answering (scripts/dev-env.sh up); only
# curl is installed (with apt-get, as root) when missing.
set -euo pipefail

# v0.34.2 (Dockerfile frontend 1.28): the newest the module proxy serves, the
# BuildKit version agent/go.mod already resolves, built with the project's Go
# (its go.mod says go 1.26.8), and checked against Docker 20.10.24's BuildKit:
# heredocs in RUN and COPY, RUN --mount=type=cache and type=secret, parallel
# stages, via `# syntax=` and via --build-arg BUILDKIT_SYNTAX.
VERSION=${KILN_FRONTEND_VERSION:-v0.34.2}
REGISTRY=${KILN_DEV_REGISTRY:-127.0.0.1:5000}
REPO=${KILN_FRONTEND_REPO:-kiln/dockerfile}
MODULE=github.com/moby/buildkit
PKG=$MODULE/frontend/dockerfile/cmd/dockerfile-frontend
REF=$REGISTRY/$REPO:$VERSION

log() { printf 'frontend-image: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

case "$VERSION" in
  v[0-9]*.[0-9]*.[0-9]*) ;;
  *) die "KILN_FRONTEND_VERSION=$VERSION is not a module version like v0.34.2" ;;
esac

CACHE=${KILN_DEV_CACHE:-}
if [ -z "$CACHE" ]; then
  if [ "$(id -u)" = 0 ]; then CACHE=/var/lib/kiln-dev/cache; else CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/kiln-dev; fi
fi
mkdir -p "$CACHE"

if ! command -v curl >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "installing curl"
    apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends curl >&2 ||
      die "apt-get install curl failed"
  else
    die "curl is missing: install it, or run scripts/dev-env.sh up as root"
  fi
fi

manifest_status() { # the HTTP status of the image's manifest, 000 if the registry does not answer
  curl -s -o /dev/null -w '%{http_code}' --max-time 10 \
    -H 'Accept: application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json' \
    "http://$REGISTRY/v2/$REPO/manifests/$VERSION" || true
}

in_registry() {
  local s; s=$(manifest_status)
  case "$s" in
    200) return 0 ;;
    404) return 1 ;;
    000) die "no registry answers on $REGISTRY: run scripts/dev-env.sh up" ;;
    *) die "GET http://$REGISTRY/v2/$REPO/manifests/$VERSION answered $s" ;;
  esac
}

if in_registry; then
  log "$REF is in the registry"
  echo "$REF"
  exit 0
fi

command -v go >/dev/null 2>&1 || die "go is not on PATH"
command -v docker >/dev/null 2>&1 || die "docker is not on PATH: run scripts/dev-env.sh up"
command -v flock >/dev/null 2>&1 || die "flock (util-linux) is not on PATH"

# One build at a time per cache (test binaries of several packages may call
# this at once); whoever waited finds the work done.
exec 9>"$CACHE/frontend-image.lock"
flock 9
if in_registry; then
  log "$REF is in the registry"
  echo "$REF"
  exit 0
fi

BIN=$CACHE/dockerfile-frontend-$VERSION
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

build_binary() {
  log "building $PKG@$VERSION (cached as $BIN)"
  local start=$SECONDS mod=$WORK/mod out=$WORK/dockerfile-frontend dir got
  mkdir -p "$mod"
  # A module of its own, outside any go.work, with the local toolchain:
  # BuildKit's own go.mod decides every dependency's version.
  export GOWORK=off GOFLAGS=-mod=mod GOTOOLCHAIN=local CGO_ENABLED=0
  cd "$mod"
  go mod init kiln.local/frontend-build >/dev/null 2>&1 || die "go mod init failed in $mod"
  go get "$MODULE@$VERSION" >&2 || die "go get $MODULE@$VERSION failed (see above)"
  # Upstream's flags (frontend/dockerfile/cmd/dockerfile-frontend/Dockerfile):
  # static, pure-Go resolver and user lookup; -s -w drop the symbol tables.
  go build -trimpath -o "$out" \
    -tags "netgo osusergo static_build" \
    -ldflags "-d -s -w -X main.Version=$VERSION -X main.Revision=kiln-built-from-module-$VERSION -X main.Package=$PKG" \
    "$PKG" >&2 || die "go build $PKG@$VERSION failed (see above)"
  got=$(go version -m "$out" | awk '$2 == "'"$MODULE"'" { print $3 }')
  [ "$got" = "$VERSION" ] || die "the built frontend has $MODULE ${got:-(none)}, want $VERSION"
  "$out" -version >&2 || die "the built frontend does not run"
  # The labels upstream gives this version's image: the frontend needs no
  # network, and the capabilities the engine may use it for.
  dir=$(go list -m -f '{{.Dir}}' "$MODULE") || die "go list -m $MODULE failed"
  grep -E '^LABEL moby\.buildkit\.frontend\.' "$dir/frontend/dockerfile/cmd/dockerfile-frontend/Dockerfile" > "$out.labels" ||
    echo 'LABEL moby.buildkit.frontend.network.none="true"' > "$out.labels"
  cd - >/dev/null
  mv -f "$out.labels" "$BIN.labels"
  mv -f "$out" "$BIN" # last: a binary in the cache is a finished one
  log "built $BIN in $((SECONDS - start))s"
}

if [ -x "$BIN" ] && [ -f "$BIN.labels" ]; then
  log "using cached $BIN"
else
  build_binary
fi

ctx=$WORK/ctx
mkdir -p "$ctx"
cp "$BIN" "$ctx/dockerfile-frontend"
labels=$(cat "$BIN.labels")
cat > "$ctx/Dockerfile" <<EOF
FROM scratch
$labels
LABEL org.opencontainers.image.title="BuildKit Dockerfile frontend" \\
      org.opencontainers.image.source="https://$MODULE" \\
      org.opencontainers.image.version="$VERSION" \\
      dev.kiln.frontend.built-by="scripts/frontend-image.sh"
COPY dockerfile-frontend /bin/dockerfile-frontend
ENTRYPOINT ["/bin/dockerfile-frontend"]
EOF

log "building image $REF"
DOCKER_BUILDKIT=0 docker build -q -t "$REF" "$ctx" >/dev/null 2>"$WORK/build.err" ||
  { cat "$WORK/build.err" >&2; die "docker build of $REF failed"; }
log "pushing $REF"
docker push "$REF" >"$WORK/push.out" 2>&1 || { cat "$WORK/push.out" >&2; die "docker push $REF failed"; }
in_registry || die "pushed $REF but the registry has no manifest for it"
log "$REF pushed ($(docker image inspect -f '{{.Size}}' "$REF") bytes)"
echo "$REF"
