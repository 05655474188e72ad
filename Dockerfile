# syntax=docker/dockerfile:1
# Nexstor container images. One static binary per program (CGO_ENABLED=0),
# no libc: nexstor (engine and control plane, CSI driver, DiskPool operator,
# certgen) and nexctl.
#
#   docker build -t nexstor:dev .                        # distroless: engine, CSI controller, operator, certgen
#   docker build -t nexstor-csi-node:dev --target csi-node .   # adds mkfs/fsck/blkid for the CSI node plugin
#
# The Helm chart (deploy/helm/nexstor) uses the first image for every
# container of Nexstor's own except the CSI node plugin, which formats and
# grows file systems and so needs e2fsprogs, xfsprogs and util-linux.

ARG GO_VERSION=1.26.8

FROM golang:${GO_VERSION}-bookworm AS build
WORKDIR /src
# Module downloads first, so that a source change does not fetch them again.
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/root/go/pkg/mod go mod download
COPY . .
# .dockerignore leaves .git out, so the binaries report the version
# "(devel)" without a VCS revision.
RUN --mount=type=cache,target=/root/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 GOFLAGS=-buildvcs=false go build -trimpath -ldflags "-s -w" \
      -o /out/ ./cmd/nexstor ./cmd/nexctl && \
    /out/nexstor version && /out/nexctl --help >/dev/null

# csi-node: the CSI node plugin needs mke2fs, resize2fs, mkfs.xfs,
# xfs_growfs and blkid next to the static binary.
FROM debian:bookworm-slim AS csi-node
RUN apt-get update && apt-get install -y --no-install-recommends e2fsprogs xfsprogs util-linux && \
    rm -rf /var/lib/apt/lists/*
COPY --from=build /out/nexstor /out/nexctl /usr/local/bin/
ENTRYPOINT ["/usr/local/bin/nexstor"]

# The default image: distroless static, root (the engine opens /dev and
# binds the NVMe/TCP and NBD ports; the chart drops root where it can).
FROM gcr.io/distroless/static-debian12:latest AS nexstor
COPY --from=build /out/nexstor /out/nexctl /usr/local/bin/
ENTRYPOINT ["/usr/local/bin/nexstor"]
