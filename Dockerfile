# The intent-pipeline image. Every process of docker-compose.yml is `intent <command>`:
#   docker build -t intent-pipeline:0.1.0 . && docker run --rm intent-pipeline:0.1.0 --help
# (docker-compose.yml tags it with the project's version, pyproject.toml's). The base image
# is pinned to a full version of the Python that pyproject.toml requires at least (3.11).
FROM python:3.11.13-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Only what the distribution is built from (pyproject.toml names it: the readme, the
# celeryconfig module, the intent and tasks packages).
WORKDIR /src
COPY pyproject.toml README.md celeryconfig.py celeryqueues.py ./
COPY intent ./intent
COPY tasks ./tasks

# Install as root, run as an unprivileged user. /var/lib/intent/metrics is the Prometheus
# multiprocess directory (INTENT_METRICS_DIR): docker-compose.yml mounts one volume there
# in the worker and the admin containers, and a new volume takes this directory's owner.
RUN pip install . \
    && rm -rf /src \
    && useradd --create-home --uid 10001 --shell /usr/sbin/nologin intent \
    && install -d -o intent -g intent /var/lib/intent /var/lib/intent/metrics

USER intent
WORKDIR /home/intent
# admin, Flower, the reference Context and Prediction services
EXPOSE 8000 5555 8001 8002
ENTRYPOINT ["intent"]
CMD ["--help"]
