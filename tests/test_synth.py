"""The built-in shapes data: real files in standard formats, identical for the same seed."""

import hashlib
import json

from conftest import run_cli


def digest(folder):
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(path.relative_to(folder).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def test_synth_cli_is_deterministic_and_writes_standard_layouts(tmp_path):
    for name in ("a", "b"):
        proc = run_cli("data", "synth", "classification", str(tmp_path / name), "--num-train", "8", "--num-val", "4")
        assert proc.returncode == 0, proc.stderr
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    assert sorted(p.name for p in (tmp_path / "a" / "train").iterdir()) == ["circle", "square", "star", "triangle"]
    assert len(list((tmp_path / "a" / "val").rglob("*.png"))) == 4
    proc = run_cli("data", "synth", "classification", str(tmp_path / "c"), "--num-train", "8", "--num-val", "4", "--seed", "1")
    assert digest(tmp_path / "c") != digest(tmp_path / "a")

    proc = run_cli("data", "synth", "scenes", str(tmp_path / "s"), "--num-train", "6", "--num-val", "3", "--size", "64")
    assert proc.returncode == 0, proc.stderr
    coco = json.loads((tmp_path / "s" / "annotations" / "instances_val.json").read_text())
    assert len(coco["images"]) == 3 and {c["name"] for c in coco["categories"]} == {"circle", "square", "triangle", "star"}
    assert all(len(a["bbox"]) == 4 and a["area"] > 0 for a in coco["annotations"])
    assert len(list((tmp_path / "s" / "masks" / "train").glob("*.png"))) == 6
