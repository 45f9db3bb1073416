# Training image: Ray + PyTorch + visionkit (+ Ray Serve), for every pod of a KubeRay cluster:
# the RayJob that trains and exports (deploy/kuberay/rayjob-train.yaml) and the RayService that
# serves (deploy/kuberay/rayservice.yaml). Build from the repository root:
#   docker build -f deploy/docker/train.Dockerfile -t visionkit/train:0.1.0 .
# GPU nodes:  --build-arg BASE_IMAGE=rayproject/ray:2.60.0-py311-gpu
# CPU-only torch wheels (much smaller): --build-arg PIP_EXTRA_INDEX_URL=<PyTorch's CPU wheel index>
ARG BASE_IMAGE=rayproject/ray:2.60.0-py311-cpu
FROM ${BASE_IMAGE}

# Must match the base image's Ray and rayVersion in the KubeRay manifests.
ARG RAY_VERSION=2.60.0
ARG PIP_EXTRA_INDEX_URL=""
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_EXTRA_INDEX_URL=${PIP_EXTRA_INDEX_URL}

# The manifests' commands name configs under this folder (e.g. configs/classification/shapes.yaml).
WORKDIR /home/ray/visionkit
COPY --chown=ray:users pyproject.toml README.md ./
COPY --chown=ray:users visionkit/ ./visionkit/
COPY --chown=ray:users plugins/ ./plugins/
COPY --chown=ray:users configs/ ./configs/
COPY --chown=ray:users deploy/serve/ ./deploy/serve/
# Ray pinned to the base image's, so pip cannot replace it with another version.
RUN pip install ".[rayserve]" "ray[train,serve]==${RAY_VERSION}" \
 && visionkit plugins \
 && python -c "import visionkit.serving.ray_app"
