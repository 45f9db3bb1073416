"""The Ray Serve application: ``visionkit serve``'s Starlette app in N replicas behind Ray's proxy.

    serve run visionkit.serving.ray_app:build model=/shared/models/model.onnx
    serve deploy deploy/serve/config.yaml     # replicas, autoscaling, resources (KubeRay: RayService)

Each replica loads the model once (one onnxruntime session, sized to the CPUs Ray gave the
replica, not to the whole node) and answers with the same routes, bodies and limits as the
single-box server (the demo page at ``/`` included); images of concurrent requests are
micro-batched by default. The model path must be readable from every node (shared storage,
or baked into the image). Ray's proxy
spreads requests over replicas; the autoscaler adds replicas when each has more than
``target_ongoing_requests`` in flight.
"""

from __future__ import annotations

from typing import Any, Optional, Union

from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.serve import Application

from .limits import Limits


class Args(BaseModel):
    """The application's arguments (``serve run ...:build key=value``, or ``args:`` in a config)."""

    model_config = ConfigDict(extra="forbid")  # a misspelt argument is an error, not a default

    model: str = Field(description="the .onnx file, readable from every node")
    threads: Optional[int] = Field(None, ge=1, description="onnxruntime threads (default: the replica's CPUs)")
    workers: Optional[int] = Field(None, ge=1, description="decoding threads (default: the replica's CPUs, >= 2)")
    max_batch: int = Field(8, ge=1, description="micro-batching: images per graph run (1: off)")
    batch_wait_ms: float = Field(2.0, ge=0)
    max_body_mb: float = Field(16.0, gt=0)
    max_megapixels: float = Field(25.0, gt=0)
    max_images: int = Field(16, ge=1)
    max_request_megapixels: float = Field(40.0, gt=0, description="all of a request's images together, "
                                          "from their headers (>= max_megapixels)")
    max_pending: int = Field(64, ge=1)
    body_timeout_s: int = Field(30, ge=1)


def _replica_cpus() -> int:
    import ray

    try:
        return max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1)))
    except Exception:  # outside a Ray worker
        return 1


@serve.deployment(
    name="visionkit",
    ray_actor_options={"num_cpus": 1},
    max_ongoing_requests=32,
    autoscaling_config={"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 8},
)
@serve.ingress()
class VisionkitModel:
    def __init__(self, **options: Any):
        from .service import InferenceService

        args = Args(**options)
        cpus = _replica_cpus()
        limits = Limits.from_units(args.max_body_mb, args.max_megapixels, args.max_images, args.max_pending,
                                   args.body_timeout_s, args.max_request_megapixels)
        self.service = InferenceService.load(args.model, threads=args.threads or cpus, limits=limits,
                                             max_batch=args.max_batch, batch_wait_ms=args.batch_wait_ms,
                                             workers=args.workers or max(2, cpus))

    def __serve_build_asgi_app__(self):
        """Called by Serve after __init__: the same app as ``visionkit serve``, on this replica's model."""
        from .app import create_app

        return create_app(self.service)


def build(args: Union[Args, dict[str, Any]]) -> Application:
    """Application builder for ``serve run`` / ``serve deploy`` (arguments validated by :class:`Args`)."""
    if not isinstance(args, Args):
        args = Args(**args)
    return VisionkitModel.bind(**args.model_dump(exclude_none=True))
