"""Classification at inference: class probabilities -> the top-k classes (numpy and Pillow only:
a deployment imports this without torch)."""

from __future__ import annotations

import numpy as np

from visionkit.runtime import Option, TaskRuntime
from visionkit.runtime.metadata import ModelError
from visionkit.runtime.tasks import label, softmax


class ClassificationRuntime(TaskRuntime):
    name = "classification"
    outputs = ("probabilities",)

    def options(self, meta):
        n = len(meta.classes)
        return [Option("top_k", int, min(5, n), "classes per image, best first", min=1, max=n)]

    def eval_options(self, meta):
        return {"top_k": len(meta.classes)}  # every class's probability: the metric reads them all

    def postprocess(self, outputs, image, meta, options):
        scores = outputs[meta.outputs[0] if meta.outputs else "probabilities"].astype(np.float64).reshape(-1)
        if len(scores) != len(meta.classes):
            raise ModelError(f"the model gives {len(scores)} scores per image but its metadata names "
                             f"{len(meta.classes)} classes")
        if meta.postprocess.get("softmax"):
            scores = softmax(scores)
        order = np.argsort(-scores, kind="stable")[: options["top_k"]]
        top = [{"class": meta.classes[i], "index": int(i), "probability": float(scores[i])} for i in order]
        return {"file": image.name, "class": top[0]["class"], "index": top[0]["index"],
                "probability": top[0]["probability"], "top_k": top}

    def draw(self, image, result, meta, options):
        return label(image, f"{result['class']} {result['probability']:.2f}")

    def foreign(self, meta):
        """A foreign classifier may answer logits or probabilities: a softmax makes both probabilities."""
        meta.postprocess = {**meta.postprocess, "softmax": True}
        return meta
