# syntax=docker/dockerfile:1
# The image compose's migrate, worker and dashboard services share: jobctl built from this
# repository, installed into a slim Python, run as an unprivileged user.
# Teams add their task modules with their own image: FROM jobctl, pip install them, set JOBCTL_TASKS.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY jobctl ./jobctl
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install /wheels/*.whl \
    && useradd --create-home --uid 10001 --shell /usr/sbin/nologin jobctl
USER jobctl
WORKDIR /home/jobctl
# only used when no Redis or database is configured (compose configures both)
ENV JOBCTL_DATA_DIR=/home/jobctl/data
EXPOSE 9181
CMD ["jobctl", "--help"]
