"""``visionkit export`` and ``visionkit eval model.onnx``: the torch side of deployment.

:mod:`.exporter` turns a run's checkpoint into an ONNX graph with metadata, :mod:`.checks`
proves it answers as PyTorch does, :mod:`.precision` makes fp16 and int8 variants and
:mod:`.evaluate` scores an exported file with the task plugin's own metric. Inference itself
lives in :mod:`visionkit.runtime`, which never imports torch.
"""
