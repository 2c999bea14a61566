# syntax=docker/dockerfile:1
#
# The Realtime Relay image: `docker build -t realtime-relay:0.1.0 .`
#
# - Two stages on the same base (change both FROM lines together), so the
#   virtualenv's interpreter path matches. The builder installs prebuilt wheels
#   only (--only-binary), so no compiler is needed and no stage has build tools.
# - Dependencies come from requirements/runtime.lock with --require-hashes.
# - The relay runs as uid/gid 10001 with a read-only root filesystem: bytecode
#   is compiled here, PYTHONDONTWRITEBYTECODE stops Python from trying to write
#   it at run time, and the only writable path is /tmp (an emptyDir in K8s).
# - The exec-form ENTRYPOINT makes Python PID 1, so SIGTERM reaches the relay,
#   which drains (see README "Graceful drain").
#
# Pin the base by digest too where your registry policy asks for it:
# FROM python:3.11.14-slim-trixie@sha256:<digest>. Checked offline by
# tests/test_deploy_image.py (hadolint and the rules above).

FROM python:3.11.14-slim-trixie AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

COPY requirements/runtime.lock /tmp/runtime.lock
RUN pip install --no-cache-dir --require-hashes --only-binary=:all: \
        -r /tmp/runtime.lock

# The relay itself is plain Python on PYTHONPATH (no build backend needed);
# `python -m relay` is the same program as the `realtime-relay` script.
COPY relay /app/relay

# Bytecode for everything, valid whatever the files' timestamps become.
RUN python -m compileall -q -j 0 --invalidation-mode unchecked-hash /opt/venv /app


FROM python:3.11.14-slim-trixie

LABEL org.opencontainers.image.title="realtime-relay" \
      org.opencontainers.image.description="A policy-enforcing WebSocket relay in front of the Azure OpenAI Realtime API." \
      org.opencontainers.image.licenses="MIT"

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    RELAY_CONFIG=/etc/realtime-relay/relay.yaml

# Owned by root and not writable by the relay's user.
COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /app /app

WORKDIR /tmp
USER 10001:10001

# 8080: WebSocket, /livez, /readyz. 9464: /metrics and /internal/drain.
EXPOSE 8080 9464

ENTRYPOINT ["python", "-m", "relay"]
CMD ["run", "--config", "/etc/realtime-relay/relay.yaml"]
