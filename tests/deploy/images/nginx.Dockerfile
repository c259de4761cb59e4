# A stand-in for the compose file's nginx image where no registry answers (CI): Debian's nginx on the
# debootstrap base of deploy/offline/build-image.sh, laid out as the stock image (conf.d/*.conf included in
# http, logs to the container's output, `nginx -g 'daemon off;'`).
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
RUN apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nginx >/dev/null \
    && rm -rf /var/lib/apt/lists/* /etc/nginx/sites-enabled/default \
    && ln -sf /dev/stdout /var/log/nginx/access.log && ln -sf /dev/stderr /var/log/nginx/error.log
STOPSIGNAL SIGQUIT
CMD ["nginx", "-g", "daemon off;"]
