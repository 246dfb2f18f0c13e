# rowcast: one image for every rowcast process (source, worker, sink, init, deploy).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml requirements.lock README.md ./
COPY rowcast ./rowcast
COPY core ./core
COPY models ./models
COPY connectors ./connectors
COPY streams ./streams
COPY ops ./ops
RUN pip install -c requirements.lock . \
 && useradd --create-home --uid 10001 rowcast
USER rowcast
ENV ROWCAST_STATE_DIR=/home/rowcast/state
ENTRYPOINT ["rowcast"]
CMD ["--help"]
