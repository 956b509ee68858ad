# syntax=docker/dockerfile:1
# The outreach engine: one image for every process (`outreach worker`, `outreach scheduler`,
# `outreach api`, and the operator commands). See docs/deployment.md.
#
#   docker build -t outreach-engine .
#   docker run --rm outreach-engine rules check /app/rules
#
# Dependencies come from deploy/requirements.lock (pinned, with hashes; `bash deploy/lock.sh`
# regenerates it from the tested .venv), the package itself from a wheel built in stage one.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY outreach ./outreach
RUN python -m pip wheel --no-deps --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/outreach \
    PATH=/opt/outreach/bin:$PATH
# an unprivileged user with a fixed uid/gid, so volume ownership is predictable
RUN groupadd --system --gid 10001 outreach \
    && useradd --system --uid 10001 --gid outreach --no-create-home \
       --home-dir /var/lib/outreach --shell /usr/sbin/nologin outreach \
    && mkdir -p /var/lib/outreach \
    && chown outreach:outreach /var/lib/outreach
COPY deploy/requirements.lock /tmp/requirements.lock
RUN python -m venv $VIRTUAL_ENV \
    && pip install --require-hashes --no-deps -r /tmp/requirements.lock \
    && rm /tmp/requirements.lock
COPY --from=build /wheels /tmp/wheels
RUN pip install --no-deps /tmp/wheels/*.whl \
    && rm -rf /tmp/wheels \
    && pip check
WORKDIR /app
COPY rules ./rules
COPY deploy/healthcheck.py deploy/prepare.py ./
# the defaults of every process; docker-compose.yml and `docker run -e` override them
ENV OUTREACH_RULES=/app/rules \
    OUTREACH_DATA_DIR=/var/lib/outreach \
    OUTREACH_DATABASE_URL=sqlite:////var/lib/outreach/outreach.db \
    OUTREACH_HOST=0.0.0.0 \
    OUTREACH_PORT=8000
VOLUME ["/var/lib/outreach"]
EXPOSE 8000
USER outreach:outreach
ENTRYPOINT ["outreach"]
CMD ["--help"]
