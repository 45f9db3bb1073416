"""The model a worker would build, built once in the driver first, on PyTorch's meta device.

A config mistake that only ``build_model`` finds (an unknown ``model.name`` for a task that
resolves names there, builder arguments the architecture refuses, an input too small for it)
would otherwise surface on every Ray worker, after Ray started, with their tracebacks. On the
meta device no memory is allocated and no weight is initialised, so this costs milliseconds.
``Path`` fields (initial weights files) are left out, as when a model is rebuilt from a
checkpoint: reading weights stays the workers' job.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, get_args

from ..errors import UserError


def _without_weight_files(model_cfg: Any) -> Any:
    fields = getattr(type(model_cfg), "model_fields", {})
    paths = [name for name, f in fields.items()  # files, and published weights from the cache (model.pretrained*)
             if f.annotation is Path or Path in get_args(f.annotation) or name.startswith("pretrained")]
    return model_cfg.model_copy(update={name: None for name in paths}) if paths else model_cfg


def check_model(plugin, sections, classes: list[str], source: Optional[str] = None) -> None:
    """Raises the plugin's own one-line error (ConfigError...) for a model it cannot build, naming
    the config file ``source`` when given; any other failure on the meta device is not the
    user's and is left to the workers to report."""
    import torch

    try:
        with torch.device("meta"):
            plugin.build_model(_without_weight_files(sections.model), list(classes), sections.data)
    except UserError as exc:
        if source:
            raise type(exc)(f"{source}: {exc}") from None
        raise
    except Exception:  # noqa: BLE001  (a model that cannot be built on meta: the workers will say)
        pass
