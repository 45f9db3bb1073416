"""Serving exported models over HTTP, on the torch-free runtime.

``visionkit serve model.onnx`` runs :func:`server.serve` (uvicorn); the Ray Serve deployment in
:mod:`visionkit.serving.ray_app` wraps the very same Starlette application (:mod:`.app`), so
both answer the same routes with the same bodies and limits. Nothing here imports torch, nor
Ray except ``ray_app``. Modules are imported on use, so that ``visionkit serve`` can say which
package of the ``serve`` extra is missing.
"""
