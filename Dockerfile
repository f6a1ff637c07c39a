# One image for every pnp service; compose runs each as `pnp <service>` (see compose.yaml).
# BASE: any Debian-like image with Python >= 3.11 and its venv module. Without a registry (an
# air-gapped build, our CI) pass one made from Debian packages: docs/DEPLOY.md, "Building
# without a registry".
ARG BASE=python:3.11-slim

# The install happens in a stage of its own: the sources, wheels and certificates it reads never
# become a layer of the image.
FROM ${BASE} AS install
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# The build context is only pyproject.toml, README.md, the packages and wheelhouse/
# (.dockerignore). A virtualenv: a Debian base's own Python refuses `pip install` (PEP 668).
# wheelhouse/*.whl (fetched beforehand with `pip download`): the install reads only them and
# never the network. wheelhouse/*.crt: CAs pip trusts besides the base's (a TLS-inspecting proxy
# between the build and PyPI).
COPY . /src
RUN set -eu; \
    python3 -m venv /opt/pnp; \
    if ls /src/wheelhouse/*.crt >/dev/null 2>&1; then \
      cat $(ls /etc/ssl/certs/ca-certificates.crt 2>/dev/null) /src/wheelhouse/*.crt > /tmp/ca.pem; \
      export PIP_CERT=/tmp/ca.pem; \
    fi; \
    if ls /src/wheelhouse/*.whl >/dev/null 2>&1; then \
      set -- --no-index --find-links /src/wheelhouse; \
    fi; \
    /opt/pnp/bin/pip install "$@" /src; \
    /opt/pnp/bin/pip uninstall -y pip

FROM ${BASE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PNP_DATA_DIR=/var/lib/pnp \
    PATH=/opt/pnp/bin:$PATH

# A fixed uid, so files in the named volumes keep their owner across rebuilds.
RUN groupadd --system --gid 10001 pnp \
 && useradd --system --uid 10001 --gid pnp --home-dir /var/lib/pnp --shell /usr/sbin/nologin pnp \
 && mkdir -p /var/lib/pnp /etc/pnp/tls \
 && chown pnp:pnp /var/lib/pnp
COPY --from=install /opt/pnp /opt/pnp

USER pnp
WORKDIR /var/lib/pnp
VOLUME ["/var/lib/pnp"]
ENTRYPOINT ["pnp"]
CMD ["--help"]
