"""Albumentations pipelines from config: a list of ``{name: TransformName, **kwargs}``.

Only albumentations transform classes can be named, so a config never runs arbitrary code.
"""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError


def build_transform(spec: dict[str, Any], where: str):
    import albumentations as A

    if not isinstance(spec, dict) or "name" not in spec:
        raise ConfigError(f"{where}: expected a mapping with a 'name' key, got {spec!r}")
    kwargs = dict(spec)
    name = kwargs.pop("name")
    cls = getattr(A, str(name), None)
    if not (isinstance(cls, type) and issubclass(cls, A.BasicTransform)):
        import difflib

        names = [n for n in dir(A) if isinstance(getattr(A, n), type) and issubclass(getattr(A, n), A.BasicTransform)]
        close = difflib.get_close_matches(str(name), names, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"{where}.name: {name!r} is not an albumentations transform{hint}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {name}: {exc}") from None


def build_pipeline(specs: list[dict[str, Any]], where: str, tail: list = (), **compose_kwargs):
    """``specs`` from the config, then the plugin's fixed ``tail`` (resize, normalise, to-tensor).

    Seeded from torch's generator at each call, so ``train.seed`` reaches the augmentation."""
    from .seeded import SeededCompose

    steps = [build_transform(s, f"{where}[{i}]") for i, s in enumerate(specs)]
    return SeededCompose([*steps, *tail], **compose_kwargs)
