# Slim inference image: `visionkit serve` on onnxruntime. No torch, no Ray (about 10x smaller
# than the training image). Build from the repository root:
#   docker build -f deploy/docker/inference.Dockerfile -t visionkit/inference:0.1.0 .
#   docker run --rm -p 127.0.0.1:8000:8000 -v "$PWD/model.onnx:/models/model.onnx:ro" visionkit/inference:0.1.0
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /opt/visionkit

# Dependencies first: this layer is rebuilt only when the list changes.
COPY deploy/requirements-inference.txt ./deploy/requirements-inference.txt
RUN pip install -r deploy/requirements-inference.txt

# visionkit without its training dependencies; the build fails if torch or Ray crept in.
COPY pyproject.toml README.md ./
COPY visionkit/ ./visionkit/
COPY plugins/ ./plugins/
RUN pip install --no-deps . \
 && python -c "import visionkit.serving.app, visionkit.runtime" \
 && if python -c "import torch" 2>/dev/null || python -c "import ray" 2>/dev/null; then \
      echo "torch or ray is installed in the inference image" >&2; exit 1; fi

RUN useradd --system --uid 10001 --no-create-home visionkit
USER visionkit
EXPOSE 8000
# In a container the server must listen on every interface; publish the port on 127.0.0.1
# (as above) or put it behind a proxy. Mount the model at /models/model.onnx.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s \
  CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"
ENTRYPOINT ["visionkit", "serve"]
CMD ["/models/model.onnx", "--host", "0.0.0.0", "--port", "8000"]
