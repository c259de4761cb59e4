# A stand-in for the compose file's Prometheus image where no registry answers (CI): Debian's Prometheus
# on the debootstrap base of deploy/offline/build-image.sh; the compose file gives its flags, as for the
# stock image.
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
RUN apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null \
    && rm -rf /var/lib/apt/lists/* && mkdir -p /prometheus
ENTRYPOINT ["/usr/bin/prometheus"]
