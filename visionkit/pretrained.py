"""torchvision's published weights, read from torch's own cache and never downloaded at train time.

``model.pretrained: NAME`` takes the weights torchvision publishes for the model's architecture
(``DEFAULT``, ``IMAGENET1K_V1``, ``COCO_V1``...: a member of the architecture's weights enum);
``model.pretrained_backbone: NAME`` (detection and segmentation) takes the ImageNet weights of the
classifier the architecture's backbone is built from (torchvision's ``weights_backbone``: e.g.
``resnet50``'s for ``fasterrcnn_resnet50_fpn``). The file is the one torchvision's own download
would write: ``torch.hub.get_dir()/checkpoints/<name>-<sha256 prefix>.pth`` (``$TORCH_HOME/hub``,
by default ``~/.cache/torch/hub``), so a cache filled by torchvision serves too.

Every read checks the file's SHA-256 against the prefix in its name (as ``torch.hub``'s
``check_hash`` does) before loading it with ``weights_only=True``. Only ``visionkit weights
fetch`` downloads, into that directory, through a temporary file that is renamed into place once
its hash is right: an interrupted or corrupted download never lands in the cache.
``VISIONKIT_WEIGHTS_URL`` (or ``--from``) replaces torchvision's base URL with a mirror's.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import re
import typing
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlparse

from .errors import ConfigError, UserError

MIRROR_ENV = "VISIONKIT_WEIGHTS_URL"
HASH_REGEX = re.compile(r"-([a-f0-9]*)\.")  # torch.hub's: the hex after the first '-' up to a '.'

#: the built-in plugins' architectures that torchvision publishes weights for, by task
BUILTIN = {
    "detection": ("fasterrcnn_mobilenet_v3_large_320_fpn", "fasterrcnn_mobilenet_v3_large_fpn",
                  "fasterrcnn_resnet50_fpn", "fasterrcnn_resnet50_fpn_v2", "retinanet_resnet50_fpn",
                  "retinanet_resnet50_fpn_v2", "fcos_resnet50_fpn", "ssdlite320_mobilenet_v3_large"),
    "segmentation": ("deeplabv3_mobilenet_v3_large", "deeplabv3_resnet50", "deeplabv3_resnet101", "fcn_resnet50",
                     "lraspp_mobilenet_v3_large"),
}
#: architectures whose backbone torchvision reshapes when it is pretrained (SSDlite's reduced tail)
NO_BACKBONE_WEIGHTS = {"ssdlite320_mobilenet_v3_large"}


def cache_dir() -> Path:
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


@dataclass(frozen=True)
class Published:
    """One published weights file: ``ResNet50_Weights.IMAGENET1K_V2`` of ``resnet50``."""

    model: str  # the architecture whose weights these are (the classifier, for a backbone)
    weights: Any  # the torchvision enum member

    @property
    def label(self) -> str:
        return f"{type(self.weights).__name__}.{self.weights.name}"

    @property
    def url(self) -> str:
        return self.weights.url

    @property
    def file_name(self) -> str:
        return os.path.basename(urlparse(self.url).path)

    @property
    def hash_prefix(self) -> str:
        found = HASH_REGEX.search(self.file_name)
        return found.group(1) if found else ""

    @property
    def path(self) -> Path:
        return cache_dir() / self.file_name

    @property
    def categories(self) -> Optional[list[str]]:
        return self.weights.meta.get("categories")

    def fetch_command(self) -> str:
        return f"visionkit weights fetch {self.model} {self.weights.name}"


def _enum(model: str, field: str = "pretrained"):
    from torchvision.models import get_model_weights

    try:
        return get_model_weights(model)
    except ValueError:
        raise ConfigError(f"model.{field}: model {model} has no published weights") from None


def _member(enum, name: str, model: str, field: str):
    found = enum.__members__.get(str(name).split(".")[-1])
    if found is None:
        raise ConfigError(f"model.{field}: {model} has no weights {name!r}; published: "
                          f"{', '.join(enum.__members__)}")
    return found


def resolve(model: str, name: str, field: str = "pretrained") -> Published:
    """``model.pretrained: name`` for architecture ``model``."""
    return Published(model, _member(_enum(model, field), name, model, field))


def backbone_model(model: str, field: str = "pretrained_backbone") -> str:
    """The classifier whose ImageNet weights torchvision puts in ``model``'s backbone."""
    from torchvision.models import get_model_builder, get_model_weights, list_models
    import torchvision.models

    _enum(model, field)  # a name torchvision does not know: "has no published weights"
    parameter = inspect.signature(get_model_builder(model)).parameters.get("weights_backbone")
    if parameter is None or model in NO_BACKBONE_WEIGHTS:
        raise ConfigError(f"model.{field}: {model} takes no separate backbone weights; use model.pretrained")
    enum = next(a for a in typing.get_args(parameter.annotation) if a is not type(None))
    for name in list_models(module=torchvision.models):
        if get_model_weights(name) is enum:
            return name
    raise ConfigError(f"model.{field}: no torchvision classifier publishes {enum.__name__}")  # pragma: no cover


def resolve_backbone(model: str, name: str, field: str = "pretrained_backbone") -> Published:
    classifier = backbone_model(model, field)
    return Published(classifier, _member(_enum(classifier, field), name, classifier, field))


# --- the cache ----------------------------------------------------------------------------------

def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


_verified: dict[tuple[str, int, int], bool] = {}


def check_cached(published: Published, field: str = "pretrained") -> Path:
    """The cached file, present and matching its hash, or a one-line error saying what to do."""
    path = published.path
    if not path.is_file():
        raise ConfigError(f"model.{field}: {published.label} is not in the weights cache: run `{published.fetch_command()}` "
                          f"on a machine with a network and copy {published.file_name} into {path.parent} (here; "
                          "$TORCH_HOME/hub/checkpoints on every node)")
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _verified:
        actual = sha256(path)
        if not actual.startswith(published.hash_prefix):
            raise ConfigError(f"model.{field}: {path} is corrupt (its sha256 {actual[:12]}... does not start with "
                              f"{published.hash_prefix}, the hash in its name); delete it and run "
                              f"`{published.fetch_command()}` again")
        _verified[key] = True
    return path


def read(published: Published, field: str = "pretrained") -> dict:
    """The verified state dict (``weights_only=True``)."""
    from .weights import read_state_dict

    return read_state_dict(check_cached(published, field), field)


# --- what plugins call --------------------------------------------------------------------------

def selected(section: Any) -> list[tuple[str, Published]]:
    """The published weights a model section asks for, checked by name (not by file)."""
    name = getattr(section, "name", None)
    chosen = []
    if getattr(section, "pretrained", None):
        chosen.append(("pretrained", resolve(name, section.pretrained)))
    if getattr(section, "pretrained_backbone", None):
        if getattr(section, "pretrained", None):
            raise ConfigError("model.pretrained_backbone: model.pretrained already holds the backbone's weights; "
                              "give one of the two")
        chosen.append(("pretrained_backbone", resolve_backbone(name, section.pretrained_backbone)))
    if chosen and getattr(section, "weights", None) is not None:
        raise ConfigError(f"model.{chosen[0][0]}: model.weights gives the initial weights too; give one of the two")
    return chosen


def check_section(section: Any, source: str) -> None:
    """The driver's check before Ray starts: each requested file is cached and intact (errors
    name the config file ``source``)."""
    try:
        for field, published in selected(section):
            check_cached(published, field)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def load_pretrained(module, model: str, name: str, strict: bool) -> None:
    """``model.pretrained``: the architecture's published weights into ``module`` (same names)."""
    from .weights import load_state

    published = resolve(model, name)
    load_state(module, read(published), strict, "pretrained", published.label)


def load_backbone(backbone, model: str, name: str) -> None:
    """``model.pretrained_backbone``: the classifier's weights into ``backbone`` (the module that
    holds its layers: a ResNet's ``conv1``/``layer1``.., or a MobileNet's ``features`` children),
    loaded by name and shape; the classifier's own head is never part of a backbone."""
    from .weights import load_state

    published = resolve_backbone(model, name)
    load_state(backbone, read(published, "pretrained_backbone"), False, "pretrained_backbone", published.label,
               strip_prefixes=("", "features."))


# --- visionkit weights fetch / list -------------------------------------------------------------

def mirror_url(published: Published, base: Optional[str]) -> str:
    base = base or os.environ.get(MIRROR_ENV)
    return f"{base.rstrip('/')}/{published.file_name}" if base else published.url


def fetch(model: str, name: str = "DEFAULT", base: Optional[str] = None, timeout: float = 60) -> Path:
    """Downloads ``model``'s weights ``name`` into the cache (a no-op when cached and intact)."""
    published = resolve(model, name)
    path = published.path
    if path.is_file() and sha256(path).startswith(published.hash_prefix):
        return path
    url = mirror_url(published, base)
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(f".{path.name}.{os.getpid()}.part")
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(part, "wb") as out:
            for block in iter(lambda: response.read(1 << 20), b""):
                digest.update(block)
                out.write(block)
        actual = digest.hexdigest()
        if not actual.startswith(published.hash_prefix):
            raise UserError(f"{url}: the download's sha256 {actual[:12]}... does not start with {published.hash_prefix} "
                            "(the hash in its name): refused and not cached")
        os.replace(part, path)
    except OSError as exc:
        raise UserError(f"{url}: download failed ({getattr(exc, 'reason', None) or exc}); on an air-gapped machine, "
                        f"fetch on one with a network and copy {published.file_name} into {path.parent}, or set "
                        f"{MIRROR_ENV} to a mirror") from None
    finally:
        part.unlink(missing_ok=True)
    return path


def builtin_models() -> dict[str, list[str]]:
    """The built-in plugins' architectures with published weights, by task."""
    import torchvision.models

    from torchvision.models import list_models

    return {"classification": sorted(list_models(module=torchvision.models)), **{k: list(v) for k, v in BUILTIN.items()}}


def _offered(model: str) -> str:
    """``IMAGENET1K_V1, IMAGENET1K_V2 (= DEFAULT) [cached]``: the names, aliases beside what they name."""
    members = _enum(model).__members__
    parts = []
    for name, member in members.items():
        if member.name != name:
            continue  # an alias (DEFAULT): shown beside the weights it names
        aliases = [a for a, m in members.items() if m is member and a != name]
        cached = Published(model, member).path.is_file()
        parts.append(name + "".join(f" (= {a})" for a in aliases) + (" [cached]" if cached else ""))
    return ", ".join(parts)


def describe(model: str) -> str:
    """One ``weights list`` line: the names ``model`` offers, which are cached, and for a
    detector or segmenter the classifier whose weights ``model.pretrained_backbone`` takes."""
    line = f"{model}: {_offered(model)}"
    try:
        classifier = backbone_model(model)
    except ConfigError:
        return line
    return f"{line}; pretrained_backbone: {classifier}'s ({_offered(classifier)})"


def cached_files() -> list[tuple[Path, str]]:
    """Each ``*.pth`` in the cache and which published weights it is ('' for none of the built-in)."""
    folder = cache_dir()
    if not folder.is_dir():
        return []
    known: dict[str, str] = {}
    for models in builtin_models().values():
        for model in models:
            for name, member in _enum(model).__members__.items():
                if member.name == name:
                    known.setdefault(Published(model, member).file_name, f"{model} {name}")
    return [(p, known.get(p.name, "")) for p in sorted(folder.glob("*.pth"))]
