"""model.pretrained: torchvision's published weights from torch's cache, fetched only by
`visionkit weights fetch` (here from a file server on 127.0.0.1), sha256-checked, never
downloaded at train time. In this process: no Ray, no internet.

The served files are real torchvision architectures' state dicts, randomly initialised here and
named ``<arch>-<sha256[:8]>.pth`` as torchvision names its files; the weights enum's URL is
pointed at that name (torchvision's own file cannot be made to hash to its published prefix).
"""

import dataclasses
import functools
import hashlib
import http.server
import io
import threading

import pytest
import torch

from visionkit import pretrained
from visionkit.cli import main
from visionkit.errors import ConfigError

from conftest import REPO, cls_overrides

CONFIG = str(REPO / "configs" / "classification" / "shapes.yaml")


class Files(http.server.ThreadingHTTPServer):
    """Serves ``self.files`` (name -> bytes) and counts the requests."""

    def __init__(self):
        self.files, self.requests = {}, []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(handler):  # noqa: N805
                name = handler.path.rsplit("/", 1)[-1]
                self.requests.append(name)
                body = self.files.get(name)
                if body is None:
                    handler.send_error(404)
                    return
                handler.send_response(200)
                handler.send_header("Content-Length", str(len(body)))
                handler.end_headers()
                handler.wfile.write(body)

            def log_message(handler, *args):  # noqa: N805
                pass

        super().__init__(("127.0.0.1", 0), Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/models"


@pytest.fixture
def server():
    files = Files()
    thread = threading.Thread(target=files.serve_forever, daemon=True)
    thread.start()
    yield files
    files.shutdown()
    files.server_close()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv(pretrained.MIRROR_ENV, raising=False)
    pretrained._verified.clear()
    return tmp_path / "torch" / "hub" / "checkpoints"


@functools.lru_cache(maxsize=None)
def random_state(arch: str, seed: int, **kwargs) -> tuple[bytes, dict]:
    """A randomly initialised ``arch``'s state dict and its file's bytes (made once per session)."""
    from torchvision.models import get_model

    torch.manual_seed(seed)
    state = get_model(arch, weights=None, **kwargs).state_dict()
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue(), state


def publish(monkeypatch, member, arch: str, seed: int = 0, **kwargs) -> tuple[str, bytes, dict]:
    """A random ``arch``'s state dict as ``member``'s published file: its bytes, named by their hash."""
    data, state = random_state(arch, seed, **kwargs)
    name = f"{arch}-{hashlib.sha256(data).hexdigest()[:8]}.pth"
    url = f"https://download.pytorch.org/models/{name}"
    monkeypatch.setattr(member, "_value_", dataclasses.replace(member.value, url=url))
    return name, data, state


@pytest.fixture
def resnet18(monkeypatch):
    from torchvision.models import ResNet18_Weights

    return publish(monkeypatch, ResNet18_Weights.IMAGENET1K_V1, "resnet18")


def test_fetch_downloads_into_torchs_cache_with_its_hash_checked(server, cache, resnet18, monkeypatch, capsys):
    name, data, _ = resnet18
    server.files[name] = data
    monkeypatch.setenv(pretrained.MIRROR_ENV, server.url)
    assert main(["weights", "fetch", "resnet18"]) == 0  # DEFAULT = IMAGENET1K_V1
    assert (cache / name).read_bytes() == data
    assert sorted(p.name for p in cache.iterdir()) == [name]  # no temporary file left behind
    assert main(["weights", "fetch", "resnet18", "IMAGENET1K_V1"]) == 0  # cached and intact: not fetched again
    assert server.requests == [name]
    capsys.readouterr()
    assert main(["weights", "list", "resnet18"]) == 0
    listed = capsys.readouterr().out
    assert f"{name}  " in listed and "resnet18 IMAGENET1K_V1" in listed
    assert "resnet18: IMAGENET1K_V1 (= DEFAULT) [cached]" in listed


@pytest.mark.parametrize("damage", ["flipped", "truncated"])
def test_a_corrupted_download_is_refused_by_its_hash_and_not_cached(server, cache, resnet18, capsys, damage):
    name, data, _ = resnet18
    server.files[name] = data[:-1000] if damage == "truncated" else data[:500] + bytes([data[500] ^ 1]) + data[501:]
    assert main(["weights", "fetch", "resnet18", "--from", server.url]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "sha256" in err and "refused and not cached" in err, err
    assert not cache.exists() or list(cache.iterdir()) == []


def test_a_pretrained_classifier_with_other_classes_loads_all_but_its_head(cache, resnet18, no_downloads, capsys):
    """Read from the cache (TORCH_HOME in tmp); the 1000-class head is re-initialised, and named."""
    from visionkit_plugins.classification.models import ModelConfig, build_model

    name, data, state = resnet18
    cache.mkdir(parents=True)
    (cache / name).write_bytes(data)
    model = build_model(ModelConfig(name="resnet18", pretrained="DEFAULT"), num_classes=4, channels=3, image_size=32)
    own = model.state_dict()
    for key, value in state.items():
        if not key.startswith("fc."):
            assert torch.equal(own[key], value), key
    assert own["fc.weight"].shape == (4, 512)
    out = capsys.readouterr().out
    assert "model.pretrained: loaded 120 of 122 tensors from ResNet18_Weights.IMAGENET1K_V1" in out, out
    assert "2 kept their initial values (2 of another shape, 0 not in the file): fc.bias, fc.weight" in out
    with pytest.raises(ConfigError, match="2 tensor.s. of another shape, e.g. 'fc.bias'"):  # strict on request
        build_model(ModelConfig(name="resnet18", pretrained="DEFAULT", weights_strict=True), 4, 3, 32)


def test_every_task_loads_initial_weights_by_the_same_policy():
    """One loader (visionkit.weights.load_state) and one default: what fits is loaded, the rest named."""
    from visionkit.registry import get_plugin

    defaults = {task: get_plugin(task).ModelConfig.model_fields["weights_strict"].default
                for task in ("classification", "detection", "segmentation")}
    assert defaults == {"classification": False, "detection": False, "segmentation": False}


def test_a_corrupt_cached_file_is_refused_before_it_is_loaded(cache, resnet18, monkeypatch):
    from visionkit_plugins.classification.models import ModelConfig, build_model

    name, data, _ = resnet18
    cache.mkdir(parents=True)
    (cache / name).write_bytes(data[:-10])
    def never(*args, **kwargs):
        raise AssertionError("a file that fails its hash was loaded")

    monkeypatch.setattr("visionkit.weights.read_state_dict", never)
    with pytest.raises(ConfigError, match=rf"{name} is corrupt .* delete it and run `visionkit weights fetch resnet18"):
        build_model(ModelConfig(name="resnet18", pretrained="IMAGENET1K_V1"), 4, 3, 32)


def test_a_missing_file_is_one_line_saying_what_to_run_before_ray_starts(cache, resnet18, tmp_path, shapes_cls, capsys,
                                                                          monkeypatch):
    import ray

    from visionkit.train import launch

    def refuse(*args, **kwargs):  # the session's Ray may be up already: any attempt to use it fails the test
        raise AssertionError("Ray was initialised")

    monkeypatch.setattr(ray, "init", refuse)
    monkeypatch.setattr(launch, "init_ray", refuse)
    name, _, _ = resnet18
    code = main(["train", CONFIG, *cls_overrides(shapes_cls, tmp_path / "runs", "pre", **{
        "model.name": "resnet18", "model.pretrained": "DEFAULT"})])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith(f"visionkit: error: {CONFIG} (with command-line overrides): model.pretrained: "), err
    assert "run `visionkit weights fetch resnet18 IMAGENET1K_V1` on a machine with a network" in err
    assert f"copy {name} into {cache}" in err
    assert not (tmp_path / "runs").exists()


def test_models_without_published_weights_and_unknown_names_are_one_line():
    from visionkit_plugins.classification.models import ModelConfig, build_model

    with pytest.raises(ConfigError, match="^model.pretrained: model mlp has no published weights$"):
        build_model(ModelConfig(name="mlp", pretrained="DEFAULT"), 4, 3, 32)
    with pytest.raises(ConfigError, match="^model.pretrained: model fcos_light has no published weights$"):
        pretrained.resolve("fcos_light", "DEFAULT")
    with pytest.raises(ConfigError, match="resnet18 has no weights 'COCO_V1'; published: IMAGENET1K_V1, DEFAULT"):
        pretrained.resolve("resnet18", "COCO_V1")
    with pytest.raises(ConfigError, match="ssdlite320_mobilenet_v3_large takes no separate backbone weights"):
        pretrained.resolve_backbone("ssdlite320_mobilenet_v3_large", "DEFAULT")


def test_backbone_weights_reach_a_detector_and_a_segmenter(cache, monkeypatch, no_downloads, capsys):
    """mobilenet_v3_large's ImageNet file (features.*) into the detector's backbone.body and the
    segmenter's backbone: every backbone tensor from the file, the heads untouched."""
    from torchvision.models import MobileNet_V3_Large_Weights
    from torchvision.models.segmentation import LRASPP_MobileNet_V3_Large_Weights

    from visionkit_plugins.detection.config import ModelConfig as DetectionModel
    from visionkit_plugins.detection.models import build as build_detector
    from visionkit_plugins.segmentation.models import ModelConfig as SegmentationModel, build_model as build_segmenter

    name, data, state = publish(monkeypatch, MobileNet_V3_Large_Weights.IMAGENET1K_V1, "mobilenet_v3_large", 1)
    cache.mkdir(parents=True)
    (cache / name).write_bytes(data)
    features = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}

    detector = build_detector(DetectionModel(name="fasterrcnn_mobilenet_v3_large_320_fpn",
                                             pretrained_backbone="IMAGENET1K_V1"), num_classes=4)
    body = detector.backbone.body.state_dict()
    assert set(body) <= set(features)
    for key, value in body.items():
        assert torch.equal(value, features[key]), key

    segmenter = build_segmenter(SegmentationModel(name="lraspp_mobilenet_v3_large",
                                                  pretrained_backbone="IMAGENET1K_V1"), 3)
    for key, value in segmenter.net.backbone.state_dict().items():
        assert torch.equal(value, features[key]), key

    name, data, state = publish(monkeypatch, LRASPP_MobileNet_V3_Large_Weights.COCO_WITH_VOC_LABELS_V1,
                                "lraspp_mobilenet_v3_large", 2, num_classes=21)
    (cache / name).write_bytes(data)
    capsys.readouterr()
    whole = build_segmenter(SegmentationModel(name="lraspp_mobilenet_v3_large", pretrained="DEFAULT"), 3)
    own = whole.net.state_dict()
    heads = [k for k in state if "_classifier." in k]
    assert sorted(heads) == ["classifier.high_classifier.bias", "classifier.high_classifier.weight",
                             "classifier.low_classifier.bias", "classifier.low_classifier.weight"]
    for key, value in state.items():
        if key not in heads:
            assert torch.equal(own[key], value), key
    out = capsys.readouterr().out
    assert "4 kept their initial values (4 of another shape, 0 not in the file)" in out, out


def test_resume_eval_export_and_the_driver_model_check_never_read_published_weights():
    """Like a weights file: a checkpoint supersedes them, so rebuilds clear the fields (the
    cache may be gone), and a resume may change them."""
    from visionkit import checkpoint
    from visionkit.datacheck.model import _without_weight_files
    from visionkit_plugins.classification.models import ModelConfig
    from visionkit_plugins.detection.config import ModelConfig as DetectionModel

    for section in (ModelConfig(name="resnet18", pretrained="DEFAULT"),
                    DetectionModel(name="fasterrcnn_resnet50_fpn", pretrained_backbone="DEFAULT")):
        for rebuilt in (checkpoint.without_initial_weights(section), _without_weight_files(section)):
            assert getattr(rebuilt, "pretrained", None) is None
            assert getattr(rebuilt, "pretrained_backbone", None) is None
    with pytest.raises(ConfigError, match="model.pretrained_backbone: model.pretrained already holds the backbone"):
        pretrained.selected(DetectionModel(name="fasterrcnn_resnet50_fpn", pretrained="DEFAULT",
                                           pretrained_backbone="DEFAULT"))


@functools.lru_cache(maxsize=None)
def published_detector(arch: str, frozen: bool) -> tuple[bytes, dict]:
    """A random ``arch``'s state dict as torchvision's published file holds it: saved from the
    FrozenBatchNorm2d build where torchvision builds one (no num_batches_tracked), BatchNorm
    statistics of its own (not 0 and 1, so eps and the copied statistics matter)."""
    from torchvision.models import get_model

    torch.manual_seed(5)
    state = get_model(arch, weights=None, weights_backbone=None).state_dict()
    if frozen:
        state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    for key, value in state.items():
        if key.endswith("running_var"):
            state[key] = torch.rand_like(value) + 0.5
        elif key.endswith("running_mean"):
            state[key] = torch.randn_like(value) * 0.1
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue(), state


def cache_detector(monkeypatch, cache, arch: str, frozen: bool):
    """``arch``'s COCO_V1 (= DEFAULT) in the cache; returns the enum member and the state."""
    from torchvision.models import get_model_weights

    member = get_model_weights(arch).COCO_V1
    data, state = published_detector(arch, frozen)
    name = f"{arch}-{hashlib.sha256(data).hexdigest()[:8]}.pth"
    monkeypatch.setattr(member, "_value_", dataclasses.replace(member.value, url=f"https://download.pytorch.org/models/{name}"))
    cache.mkdir(parents=True, exist_ok=True)
    (cache / name).write_bytes(data)
    return member, state


def layout(model) -> dict:
    return {name: (type(m).__name__, getattr(m, "eps", None)) for name, m in model.named_modules()}


def trainable(model) -> dict:
    return {name: p.requires_grad for name, p in model.named_parameters()}


# The two smallest detectors: torchvision builds the Faster R-CNN with FrozenBatchNorm2d and 3 of 6
# backbone stages trainable, SSDlite with trainable BatchNorm and every stage trainable.
@pytest.mark.parametrize("arch,frozen", [("fasterrcnn_mobilenet_v3_large_320_fpn", True),
                                         ("ssdlite320_mobilenet_v3_large", False)])
def test_a_pretrained_detector_is_built_as_torchvision_builds_it(cache, monkeypatch, no_downloads, arch, frozen):
    """The reference is torchvision's own builder given the weights, its file read from the cache
    (torch.hub's reader replaced by one that reads only there, whichever name torchvision bound)."""
    import torchvision.models._api
    from torchvision.models import get_model

    from visionkit_plugins.detection.config import ModelConfig
    from visionkit_plugins.detection.models import build

    member, _ = cache_detector(monkeypatch, cache, arch, frozen)
    from_cache = lambda url, **kwargs: torch.load(cache / url.rsplit("/", 1)[-1], weights_only=True)  # noqa: E731
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", from_cache)
    reference = get_model(arch, weights=member)
    ours = build(ModelConfig(name=arch, pretrained="DEFAULT", weights_strict=True), num_classes=91)
    assert layout(ours) == layout(reference)
    assert any(t == "FrozenBatchNorm2d" for t, _ in layout(ours).values()) == frozen
    assert trainable(ours) == trainable(reference)
    assert all(trainable(ours).values()) != frozen
    theirs = reference.state_dict()
    assert ours.state_dict().keys() == theirs.keys()
    for key, value in ours.state_dict().items():
        assert torch.equal(value, theirs[key]), key
    ours.eval()
    reference.eval()
    x = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        assert torch.equal(ours.backbone(x)["0"], reference.backbone(x)["0"])


def test_a_pretrained_detector_for_other_classes_loads_all_but_its_head(cache, monkeypatch, no_downloads, capsys):
    """Strict loading accepts the file without num_batches_tracked; the COCO class head is
    re-initialised for 3 classes and named; the options override torchvision's build; a rebuild
    from the run's config (resume, eval, export: no published weights) makes the same modules."""
    from torchvision.ops.misc import FrozenBatchNorm2d

    from visionkit import checkpoint
    from visionkit_plugins.detection.config import ModelConfig
    from visionkit_plugins.detection.models import build

    arch = "fasterrcnn_mobilenet_v3_large_320_fpn"
    _, state = cache_detector(monkeypatch, cache, arch, frozen=True)
    cfg = ModelConfig(name=arch, pretrained="DEFAULT")
    assert (cfg.freeze_backbone_norm, cfg.trainable_backbone_layers) == (True, 3)
    assert (ModelConfig(name=arch).freeze_backbone_norm, ModelConfig(name=arch).trainable_backbone_layers) == (False, None)
    capsys.readouterr()
    model = build(cfg, num_classes=4)
    head = sorted(k for k in state if k.startswith("roi_heads.box_predictor."))
    own = model.state_dict()
    for key, value in state.items():
        if key not in head:
            assert torch.equal(own[key], value), key
    assert own["roi_heads.box_predictor.cls_score.weight"].shape == (4, 1024)
    out = capsys.readouterr().out
    assert (f"model.pretrained: loaded {len(state) - 4} of {len(state)} tensors from "
            f"FasterRCNN_MobileNet_V3_Large_320_FPN_Weights.COCO_V1; 4 kept their initial values (4 of another shape, "
            f"0 not in the file): {', '.join(head)}") in out, out

    rebuilt = build(checkpoint.without_initial_weights(cfg), num_classes=4)
    assert layout(rebuilt) == layout(model) and trainable(rebuilt) == trainable(model)
    rebuilt.load_state_dict(model.state_dict())  # strict: the same tensors

    plain = build(ModelConfig(name=arch, pretrained="DEFAULT", freeze_backbone_norm=False,
                              trainable_backbone_layers=None, weights_strict=True), num_classes=91)
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in plain.modules())
    assert all(trainable(plain).values())
