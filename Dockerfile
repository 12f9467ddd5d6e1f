FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY pyproject.toml README.md config.yaml ./
COPY proxy ./proxy
RUN pip install --no-cache-dir . \
    && useradd --system --uid 10001 --home-dir /data tokenbooth \
    && mkdir -p /data && chown tokenbooth /data
USER tokenbooth
EXPOSE 8787
VOLUME ["/data"]
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s \
  CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8787/healthz', timeout=2).status == 200 else 1)"
CMD ["tokenbooth", "serve", "--host", "0.0.0.0", "--config", "/app/config.yaml", "--db", "/data/tokenbooth.db"]
