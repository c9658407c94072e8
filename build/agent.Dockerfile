# power-agent: cgo (go-nvml loads libnvidia-ml.so.1 with dlopen), so it needs
# glibc. The NVML library is never bundled: the NVIDIA container runtime
# (runtimeClassName: nvidia) mounts the node driver's own copy. The build
# stage is Debian 12 like the runtime image, so the binary asks for no newer
# glibc than the image has.
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=1 CGO_CFLAGS=-Wno-deprecated-declarations \
    go build -trimpath -ldflags="-s -w" -o /out/power-agent ./cmd/agent

FROM gcr.io/distroless/base-debian12
COPY --from=build /out/power-agent /usr/local/bin/power-agent
ENTRYPOINT ["/usr/local/bin/power-agent"]
