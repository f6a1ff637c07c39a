# One image for every pnp service; compose runs each as `pnp <service>` (see compose.yaml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PNP_DATA_DIR=/var/lib/pnp

# A fixed uid, so files in the named volumes keep their owner across rebuilds.
RUN groupadd --system --gid 10001 pnp \
 && useradd --system --uid 10001 --gid pnp --home-dir /var/lib/pnp --shell /usr/sbin/nologin pnp \
 && mkdir -p /var/lib/pnp /etc/pnp/tls \
 && chown pnp:pnp /var/lib/pnp

# The build context is only pyproject.toml, README.md and the packages (.dockerignore).
COPY . /src
RUN pip install /src && rm -rf /src

USER pnp
WORKDIR /var/lib/pnp
VOLUME ["/var/lib/pnp"]
ENTRYPOINT ["pnp"]
CMD ["--help"]
