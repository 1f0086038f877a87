# One image for every CloudScale process: the API (gunicorn, the default command), Celery worker,
# beat and Flower; docker-compose.yml picks the command. Slim, non-root, no compiler in the image.

# --- build: dependencies and the project into a virtualenv ----------------------------------------
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/venv
# Dependencies first: this layer is rebuilt only when pyproject.toml changes.
COPY pyproject.toml README.md ./
RUN mkdir cloudscale_project tenants events fraud scoring carts compat ops benchmarks \
 && /opt/venv/bin/pip install . \
 && /opt/venv/bin/pip uninstall -y cloudscale
# Every app of INSTALLED_APPS (benchmarks holds `manage.py loadgen`); their templates and static
# files go into the wheel by pyproject.toml's package-data (tests/test_deploy.py checks both).
COPY cloudscale_project ./cloudscale_project
COPY tenants ./tenants
COPY events ./events
COPY fraud ./fraud
COPY scoring ./scoring
COPY carts ./carts
COPY compat ./compat
COPY ops ./ops
COPY benchmarks ./benchmarks
RUN /opt/venv/bin/pip install --no-deps .

# --- runtime ----------------------------------------------------------------------------------------
FROM python:3.11-slim
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DJANGO_SETTINGS_MODULE=cloudscale_project.settings \
    CLOUDSCALE_STATE_DIR=/app/state \
    PROMETHEUS_MULTIPROC_DIR=/tmp/prometheus \
    GUNICORN_BIND=0.0.0.0:8000
RUN groupadd --system --gid 10001 cloudscale \
 && useradd --system --uid 10001 --gid cloudscale --home-dir /app --no-create-home cloudscale
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY manage.py ./
COPY deploy ./deploy
# Admin and API-docs assets, collected at build time (served by whitenoise).
RUN mkdir -p /app/state \
 && DJANGO_SECRET_KEY=collectstatic-only python manage.py collectstatic --noinput --verbosity 0 \
 && rm -f /app/state/secret_key \
 && chown -R cloudscale:cloudscale /app/state \
 && chmod 0755 deploy/docker-entrypoint.sh
USER 10001:10001
EXPOSE 8000 5555
ENTRYPOINT ["/app/deploy/docker-entrypoint.sh"]
CMD ["gunicorn", "cloudscale_project.wsgi:application", "--config", "deploy/gunicorn.conf.py"]
