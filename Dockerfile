# syntax=docker/dockerfile:1
# One image for every role: `docker run IMAGE --mode=server|publisher|projector|system`,
# `docker run IMAGE migrate`. Build: docker build -t noetl-control-plane .
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
WORKDIR /app
# Dependencies first, read from pyproject.toml alone, so a code change reuses this layer.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt
COPY . .
# Editable on purpose: core/paths.py looks for sql/, migrations/, system/ and examples/ beside
# core/, so the code must run from this source tree and not from a copy in site-packages.
# The final stage keeps /app at the same path, where the editable finder points.
# Bytecode is compiled here because the runtime user cannot write to /app.
RUN pip install --no-deps -e . \
    && python -c "from core.paths import SQL_DIR, MIGRATIONS_DIR; assert SQL_DIR.is_dir() and MIGRATIONS_DIR.is_dir(), SQL_DIR" \
    && python -m compileall -q /app

FROM python:${PYTHON_VERSION}-slim
LABEL org.opencontainers.image.title="noetl-control-plane" \
      org.opencontainers.image.description="NoETL control plane: server, publisher, projector, system pool"
# A fixed uid/gid so Kubernetes can check runAsNonRoot; /var/lib/noetl is the data folder
# (only used with NOETL_ALLOW_INSECURE_DEFAULT_KEY, e.g. under compose), owned by that user so
# a named volume mounted there starts writable.
RUN groupadd --system --gid 10001 noetl \
    && useradd --system --uid 10001 --gid noetl --home-dir /var/lib/noetl --no-create-home \
       --shell /usr/sbin/nologin noetl \
    && install -d -o noetl -g noetl -m 0700 /var/lib/noetl
COPY --from=build /opt/venv /opt/venv
# The source stays owned by root: the process can read it but never change it.
COPY --from=build /app /app
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    NOETL_DATA_DIR=/var/lib/noetl
WORKDIR /app
USER 10001:10001
# server API 8082; publisher, projector, system side ports 9091, 9092, 9093 (/livez /health /metrics)
EXPOSE 8082 9091 9092 9093
ENTRYPOINT ["noetl-server"]
CMD ["--mode=server"]
