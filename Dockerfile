# cdc: a static binary on distroless, running as a non-root user.
#   docker build -t cdc .
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/cdc ./cmd/cdc

# static-debian12 carries CA certificates (for sslmode=verify-full against
# managed databases) and tzdata, and nothing else: no shell, no package
# manager. :nonroot runs as uid 65532.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/cdc /cdc
USER nonroot:nonroot
EXPOSE 8080
ENTRYPOINT ["/cdc"]
CMD ["run"]
