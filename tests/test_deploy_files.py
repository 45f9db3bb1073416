"""deploy/: Dockerfiles, KubeRay manifests and the Ray Serve config, checked without Docker or
Kubernetes (neither runs here): they parse, and everything they name (files copied into the
images, configs, commands and their arguments, volumes, the Serve application and its
arguments, image tags, Ray versions) exists and agrees."""

from __future__ import annotations

import fnmatch
import re
import shlex
from pathlib import Path, PurePosixPath

import pytest
import yaml

from visionkit import __version__, cli
from visionkit.config import load_config

from conftest import REPO
from servehelp import NOT_IN_SLIM_IMAGE

DEPLOY = REPO / "deploy"
DOCKERFILES = sorted((DEPLOY / "docker").glob("*.Dockerfile"))
MANIFESTS = sorted((DEPLOY / "kuberay").glob("*.yaml"))


# --- helpers ------------------------------------------------------------------------------------
def dockerfile(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, current = [], ""
    for line in path.read_text().splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        current += line.rstrip()[:-1] + " " if line.rstrip().endswith("\\") else line
        if not line.rstrip().endswith("\\"):
            word, _, rest = current.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
            current = ""
    return out


def arg_defaults(steps) -> dict[str, str]:
    return dict(re.match(r"(\w+)=\"?([^\"]*)\"?", rest).groups() for word, rest in steps
                if word == "ARG" and "=" in rest)


def dockerignored(path: str) -> bool:
    patterns = [p.strip() for p in (REPO / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]
    parts = PurePosixPath(path.rstrip("/")).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return any(fnmatch.fnmatch(prefix, pattern) for prefix in prefixes for pattern in patterns)


def parse_cli(argv: list[str]):
    try:
        return cli.build_parser().parse_args(argv)
    except SystemExit:
        raise AssertionError(f"`visionkit {' '.join(argv)}` is not a valid visionkit command") from None


def docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def manifest(kind: str) -> dict:
    found = [d for p in MANIFESTS for d in docs(p) if d.get("kind") == kind]
    assert len(found) == 1, f"expected one {kind} in deploy/kuberay, found {len(found)}"
    return found[0]


def pod_specs(cluster_spec: dict) -> list[dict]:
    groups = [cluster_spec["headGroupSpec"], *cluster_spec.get("workerGroupSpecs", [])]
    return [g["template"]["spec"] for g in groups]


def mounts(cluster_spec: dict) -> set[str]:
    """Mount paths present in every pod of the cluster (a path must be reachable on every node)."""
    per_pod = []
    for spec in pod_specs(cluster_spec):
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        paths = set()
        for container in spec["containers"]:
            for m in container.get("volumeMounts", []):
                assert m["name"] in volumes, f"volumeMount {m['name']!r} has no volume in its pod"
                paths.add(m["mountPath"])
        per_pod.append(paths)
    return set.intersection(*per_pod)


def under(path: str, roots: set[str]) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


def image_root() -> str:
    steps = dockerfile(DEPLOY / "docker" / "train.Dockerfile")
    return [rest for word, rest in steps if word == "WORKDIR"][-1]


def in_repo(path: str) -> Path:
    """A path inside the training image -> the repository file it was copied from."""
    root = image_root().rstrip("/") + "/"
    assert path.startswith(root), f"{path}: not under the image's WORKDIR {root}"
    return REPO / path[len(root):]


def serve_checks(config: dict, volume_roots: set[str] | None) -> None:
    from ray.serve.schema import ServeDeploySchema

    from visionkit.serving import ray_app

    schema = ServeDeploySchema.model_validate(config) if hasattr(ServeDeploySchema, "model_validate") \
        else ServeDeploySchema.parse_obj(config)
    for app in schema.applications:
        module, _, attr = app.import_path.partition(":")
        assert module == ray_app.__name__ and callable(getattr(ray_app, attr)), app.import_path
        args = ray_app.Args(**app.args)  # the builder's own validation
        if volume_roots is not None:
            assert under(args.model, volume_roots), f"model {args.model} is on no volume every pod mounts"
        assert {d.name for d in app.deployments} <= {ray_app.VisionkitModel.name}


# --- the files ----------------------------------------------------------------------------------
def test_every_yaml_file_parses():
    files = sorted(DEPLOY.rglob("*.yaml")) + sorted(DEPLOY.rglob("*.yml"))
    assert len(files) >= 4
    for path in files:
        assert docs(path), f"{path}: empty"


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfiles_copy_what_exists(path):
    steps = dockerfile(path)
    assert steps[0][0] in ("FROM", "ARG") and any(w == "FROM" for w, _ in steps)
    copies = [shlex.split(rest) for word, rest in steps if word in ("COPY", "ADD")]
    assert copies
    for words in copies:
        sources = [w for w in words if not w.startswith("--")][:-1]
        for src in sources:
            assert (REPO / src).exists(), f"{path.name}: COPY {src}: not in the repository"
            assert not dockerignored(src), f"{path.name}: COPY {src}: excluded by .dockerignore"
    # Everything pyproject.toml's build needs is copied before `pip install .`.
    copied = {s.rstrip("/") for words in copies for s in [w for w in words if not w.startswith("--")][:-1]}
    assert {"pyproject.toml", "README.md", "visionkit", "plugins"} <= copied
    assert dockerignored(".venv/lib") and dockerignored("runs/x") and not dockerignored("visionkit/cli.py")


def test_inference_image_runs_visionkit_serve_without_torch():
    steps = dockerfile(DEPLOY / "docker" / "inference.Dockerfile")
    import json

    entry = json.loads(next(rest for word, rest in steps if word == "ENTRYPOINT"))
    cmd = json.loads(next(rest for word, rest in steps if word == "CMD"))
    assert entry[0] == "visionkit"
    args = parse_cli(entry[1:] + cmd)
    assert args.command == "serve" and args.host == "0.0.0.0"
    assert any(f":{args.port}/health" in rest for word, rest in steps if word == "HEALTHCHECK")
    assert any(w == "EXPOSE" and rest == str(args.port) for w, rest in steps)
    installs = " ".join(rest for word, rest in steps if word == "RUN")
    assert "pip install --no-deps ." in installs and "requirements-inference.txt" in installs
    assert not any(w == "USER" and rest in ("root", "0") for w, rest in steps) and any(w == "USER" for w, _ in steps)


def _requirement_names(lines) -> set[str]:
    return {re.split(r"[<>=!~\[; ]", line.strip(), maxsplit=1)[0].lower() for line in lines
            if line.strip() and not line.strip().startswith("#")}


def test_inference_requirements_cover_the_runtime_and_the_server():
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    slim = _requirement_names((DEPLOY / "requirements-inference.txt").read_text().splitlines())
    assert _requirement_names(project["optional-dependencies"]["serve"]) <= slim
    for requirement in project["dependencies"]:
        name = _requirement_names([requirement]).pop()
        left_out = {re.split(r"\[", k)[0] for k in NOT_IN_SLIM_IMAGE}
        assert name in slim or name in left_out, (
            f"pyproject dependency {requirement!r}: add it to deploy/requirements-inference.txt if the server "
            "needs it, else to tests/servehelp.py NOT_IN_SLIM_IMAGE (the serving tests then block it)")


def test_training_image_and_manifests_agree_on_versions_and_tags():
    steps = dockerfile(DEPLOY / "docker" / "train.Dockerfile")
    defaults = arg_defaults(steps)
    ray_version = defaults["RAY_VERSION"]
    assert ray_version in defaults["BASE_IMAGE"], "base image and RAY_VERSION disagree"
    header = (DEPLOY / "docker" / "train.Dockerfile").read_text()
    tags = set(re.findall(r"docker build -f deploy/docker/train\.Dockerfile -t (\S+) \.", header))
    assert tags == {f"visionkit/train:{__version__}"}
    for kind in ("RayJob", "RayService"):
        spec = manifest(kind)["spec"]
        cluster = spec.get("rayClusterSpec") or spec["rayClusterConfig"]
        assert cluster["rayVersion"] == ray_version, f"{kind}: rayVersion {cluster['rayVersion']} != {ray_version}"
        images = {c["image"] for pod in pod_specs(cluster) for c in pod["containers"]}
        assert images == tags, f"{kind}: images {images} are not the one train.Dockerfile builds"


def test_rayjob_commands_configs_and_paths_exist():
    job = manifest("RayJob")
    assert job["apiVersion"] == "ray.io/v1"
    spec = job["spec"]
    roots = mounts(spec["rayClusterSpec"])
    entry = shlex.split(spec["entrypoint"])
    assert entry[:2] == ["bash", "-c"] and len(entry) == 3
    commands = [shlex.split(c) for c in entry[2].split(";") if c.strip() and c.strip() != "set -e"]
    assert [c[:2] for c in commands] == [["visionkit", "data"], ["visionkit", "train"], ["visionkit", "export"]]
    seen: dict[str, str] = {}
    for words in commands:
        args = parse_cli(words[1:])
        if args.command == "data":
            assert under(args.out, roots)
            seen["data"] = args.out
        elif args.command == "train":
            config = in_repo(args.config)
            assert config.is_file(), f"{args.config}: no {config.relative_to(REPO)} in the repository"
            cfg, _ = load_config(config, args.overrides)  # every override names a real key
            assert str(cfg.data["root"]) == seen["data"], "training reads other data than the job writes"
            assert under(str(cfg.output.storage_path), roots), "checkpoints must go to the shared volume"
            seen["run"] = f"{cfg.output.storage_path}/{cfg.output.name}"
            assert cfg.ray.num_workers == "auto" or cfg.ray.num_workers <= sum(g["replicas"] for g in spec["rayClusterSpec"]["workerGroupSpecs"])
        else:
            assert args.target == seen["run"], "export reads another run than the one trained"
            assert under(args.output, roots)
            seen["model"] = args.output
    # The RayService serves what this job exports.
    service = yaml.safe_load(manifest("RayService")["spec"]["serveConfigV2"])
    assert service["applications"][0]["args"]["model"] == seen["model"]


def test_rayservice_serves_the_ray_serve_app():
    svc = manifest("RayService")
    assert svc["apiVersion"] == "ray.io/v1"
    cluster = svc["spec"]["rayClusterConfig"]
    serve_checks(yaml.safe_load(svc["spec"]["serveConfigV2"]), mounts(cluster))


def test_serve_config_file_is_a_valid_serve_config():
    config = yaml.safe_load((DEPLOY / "serve" / "config.yaml").read_text())
    serve_checks(config, None)
    assert config["http_options"]["host"] == "127.0.0.1"  # as `visionkit serve`: loopback unless said


def test_volumes_use_the_shared_claim():
    claims = [d for p in MANIFESTS for d in docs(p) if d.get("kind") == "PersistentVolumeClaim"]
    assert [c["metadata"]["name"] for c in claims] == ["visionkit-shared"]
    assert claims[0]["spec"]["accessModes"] == ["ReadWriteMany"]  # pods on many nodes write/read it
    for kind, key in (("RayJob", "rayClusterSpec"), ("RayService", "rayClusterConfig")):
        for pod in pod_specs(manifest(kind)["spec"][key]):
            for volume in pod.get("volumes", []):
                assert volume["persistentVolumeClaim"]["claimName"] == "visionkit-shared"


def test_readme_names_deploy_files_that_exist():
    text = (REPO / "README.md").read_text()
    named = set(re.findall(r"\b(deploy/[\w./-]+\w)", text)) | set(re.findall(r"\b(benchmarks/load_test\.py)", text))
    assert any(n.startswith("deploy/kuberay/") for n in named), "README: no Deploy section naming deploy/"
    for path in named:
        assert (REPO / path).exists(), f"README names {path}, which does not exist"
