# The latpred service (REST API, dashboard, job worker), installed at build time, run as an unprivileged user.
#   docker build -t latpred .
#   docker compose up            (PostgreSQL + this image; see docker-compose.yml)
FROM python:3.11-slim

# LightGBM's wheel needs the GNU OpenMP runtime.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY pyproject.toml setup.py README.md LICENSE ./
COPY predictor ./predictor
COPY profiler ./profiler
COPY service ./service
COPY data ./data
RUN pip install --no-cache-dir ".[server]" \
    && useradd --create-home --uid 10001 latpred \
    && mkdir -p /data && chown latpred /data

USER latpred
WORKDIR /home/latpred
ENV LATPRED_HOME=/data
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=6 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/api/v1/health', timeout=4).status != 200)"]
CMD ["latpred", "serve", "--host", "0.0.0.0", "--port", "8000"]
