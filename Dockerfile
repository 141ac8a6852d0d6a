# syntax=docker/dockerfile:1
# The one image recipe of the radloop services (seven with interop). Build from the repository root, naming the service:
#   docker build --build-arg SERVICE=triage -t radloop-triage .
# Multi-stage (dependencies in a venv, the browser viewer, then a slim runtime with the sources), non-root, healthcheck.
# What differs between services is decided here by SERVICE alone: its dependency set (the pyproject extra named
# after it; triage's brings CPU-only torch), triage gets training/ (its model code),
# the streaming gateway gets the built viewer and the OHIF build, every image gets shared/ and its own services/<SERVICE>/ only.
# The port is shared.settings.DEFAULT_PORTS[SERVICE] unless RADLOOP_PORT says otherwise (compose and ECS set it).
ARG SERVICE=""

FROM python:3.11-slim-bookworm AS build
ARG SERVICE
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH
WORKDIR /src
RUN test -n "$SERVICE" || { echo "build with --build-arg SERVICE=<a directory of services/>" >&2; exit 1; }
RUN python -m venv /opt/venv
# Dependencies only, pinned by pyproject.toml and constraints.txt (the same pins as CI). The sources are copied
# as files below, so package data (JSON policies, CSV profiles) comes along.
COPY pyproject.toml constraints.txt README.md ./
# Each image installs the `service` extra and its own (pyproject.toml: `.[service,<SERVICE, - for _>]`), nothing else: no moto
# or Flask (the `local` extra), no training stack. tests/test_lean_installs.py checks each service imports only these.
# Triage scores with torch on CPU: torch and torchvision come first, alone (--no-deps) and from the CPU wheel index
# only (--index-url, so PyPI's CUDA wheels cannot be picked), which keeps its image near 1 GB instead of 6 GB. The
# pins (constraints.txt) match the CPU builds (2.14.1+cpu satisfies ==2.14.1), so the second install keeps them and
# resolves their own dependencies (filelock, sympy...) from PyPI with the same pins as everything else.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN if [ "$SERVICE" = "triage" ]; then \
        pip install -c constraints.txt --no-deps --index-url "$TORCH_INDEX_URL" torch torchvision; \
    fi \
    && pip install -c constraints.txt ".[service,$(python -c "import os; print(os.environ['SERVICE'].replace('_', '-'))")]" \
    && pip uninstall -y radloop

# The browser viewer (viewer/), built from its lock file, for the gateway that serves viewer/dist at /viewer; an
# empty folder for every other service.
FROM node:22-bookworm-slim AS viewer
ARG SERVICE
WORKDIR /viewer
COPY viewer/package.json viewer/package-lock.json ./
COPY viewer/index.html viewer/vite.config.js ./
COPY viewer/worklist ./worklist
COPY viewer/src ./src
RUN if [ "$SERVICE" = "streaming_gateway" ]; then \
        npm ci --no-audit --no-fund && npm run build; \
    else \
        mkdir -p dist; \
    fi

# The OHIF viewer's published build for the gateway, served at /ohif (docs/interop.md): fetched with npm and checked
# against ohif/ohif.lock.json's integrity by the script `make ohif` runs, which also rebases it to /ohif/ and installs
# radloop's app-config.js. It needs Python and npm; node and npm come from the viewer stage. An empty folder for every
# other service.
FROM python:3.11-slim-bookworm AS ohif
ARG SERVICE
WORKDIR /src
COPY --from=viewer /usr/local/bin/node /usr/local/bin/node
COPY --from=viewer /usr/local/lib/node_modules/npm /usr/local/lib/node_modules/npm
COPY ohif/ohif.lock.json ohif/app-config.js ./ohif/
COPY scripts/fetch_ohif.py ./scripts/
RUN mkdir -p ohif/dist \
    && if [ "$SERVICE" = "streaming_gateway" ]; then \
        ln -s /usr/local/lib/node_modules/npm/bin/npm-cli.js /usr/local/bin/npm \
        && python scripts/fetch_ohif.py; \
    fi

# The sources one service runs: COPY fails when services/$SERVICE does not exist, so a misspelt SERVICE stops here.
FROM python:3.11-slim-bookworm AS sources
ARG SERVICE
WORKDIR /app
COPY shared ./shared
COPY services/__init__.py ./services/__init__.py
COPY services/${SERVICE} ./services/${SERVICE}
COPY training /tmp/training
RUN if [ "$SERVICE" = "triage" ]; then mv /tmp/training ./training; fi
COPY --from=viewer /viewer/dist ./viewer/dist
COPY --from=ohif /src/ohif/dist ./ohif/dist

FROM python:3.11-slim-bookworm AS runtime
ARG SERVICE
ENV PATH=/opt/venv/bin:$PATH PYTHONPATH=/app PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    RADLOOP_HOST=0.0.0.0 RADLOOP_VAR_DIR=/tmp/radloop RADLOOP_SERVICE_NAME=${SERVICE}
RUN groupadd --system --gid 10001 radloop \
    && useradd --system --uid 10001 --gid radloop --no-create-home --shell /usr/sbin/nologin radloop
COPY --from=build /opt/venv /opt/venv
COPY --from=sources --chown=root:root /app /app
WORKDIR /app
USER 10001:10001
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; from shared.settings import DEFAULT_PORTS; port = os.environ.get('RADLOOP_PORT') or DEFAULT_PORTS[os.environ['RADLOOP_SERVICE_NAME']]; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % port, timeout=3)"]
# exec: the service is PID 1's replacement, so SIGTERM from ECS or compose reaches it and it drains before exiting.
CMD ["sh", "-c", "exec python -m \"services.$RADLOOP_SERVICE_NAME\""]
