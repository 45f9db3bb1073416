"""report.html: written at the end of a real (tiny) training run of each task and by
``visionkit report``; one self-contained page (parses, no external reference, every inline
image decodes), curves without constants, the task plugin's sections, a third party's too."""

from __future__ import annotations

import base64
import io
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml
from PIL import Image

from visionkit import cli
from visionkit.data import synth
from visionkit.report import RunView, build_report
from visionkit.report.charts import constants, curve_panels, integer_ticks
from visionkit.report.page import ReportSection, external_reference, render
from visionkit.train import launch

from conftest import AWS_ENV, BUCKET, REPO, cls_overrides, run_cli

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr",
        # inside inline SVG, self-closed
        "rect", "line", "circle", "polyline", "path"}

#: the sections each built-in task adds between the curves and the config
TASK_SECTIONS = {
    "classification": ["Confusion matrix and per-class accuracy", "Most confidently wrong validation images"],
    "detection": ["Precision and recall", "Validation images: predicted and true boxes, worst first"],
    "segmentation": ["IoU per class", "Validation images, worst first"],
}


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    return synth.scenes(tmp_path_factory.mktemp("report_scenes") / "shapes", num_train=8, num_val=4, size=64, seed=2)


def _config(task: str) -> str:
    return str(REPO / "configs" / task / "shapes.yaml")


@pytest.fixture(scope="module")
def runs(shapes_cls, scenes, tmp_path_factory) -> dict[str, Path]:
    """One two-epoch run per task, in this process: train writes report.html at its end."""
    root = tmp_path_factory.mktemp("report_runs")
    common = ["ray.num_workers=0", "train.progress=false", f"output.storage_path={root}", "train.epochs=2"]
    return {
        "classification": launch.train(_config("classification"), cls_overrides(shapes_cls, root, "cls", **{
            "ray.num_workers": 0, "train.epochs": 2})),
        "detection": launch.train(_config("detection"), common + [
            "output.name=det", f"data.root={scenes}", "data.train_transforms=[]", "model.min_size=64",
            "model.max_size=64", "train.batch_size=4"]),
        "segmentation": launch.train(_config("segmentation"), common + [
            "output.name=seg", f"data.root={scenes}", "model.width=8", "model.blocks=[1,1,1]", "train.batch_size=4"]),
    }


class Page(HTMLParser):
    """Checks that tags nest and close, and collects what the tests look at."""

    def __init__(self, text: str):
        super().__init__()
        self.stack: list[str] = []
        self.h2: list[str] = []
        self.images: list[str] = []
        self.captions: list[str] = []
        self._text: list[str] | None = None
        self._in: str | None = None
        self.feed(text)
        self.close()
        assert not self.stack, f"unclosed tags: {self.stack}"

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs["src"])
        if tag in ("h2", "figcaption"):
            self._in, self._text = tag, []
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs)["src"])

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes <{self.stack[-1] if self.stack else None}>"
        self.stack.pop()
        if tag == self._in:
            (self.h2 if tag == "h2" else self.captions).append("".join(self._text or []))
            self._in = None

    def handle_data(self, data):
        if self._in:
            self._text.append(data)


def check_page(path: Path) -> Page:
    """Parses, refers to nothing outside itself, and every inline image decodes."""
    text = path.read_text()
    assert text.startswith("<!DOCTYPE html>")
    assert not re.search(r"https?://", text), "the page refers to the network"
    assert not re.search(r"""\b(?:src|href)\s*=\s*["']?(?!data:|#)[^\s"'>]""", text), "the page refers to another file"
    page = Page(text)
    assert page.h2[:2] == ["The run", "Curves"] and page.h2[-1] == "Config"
    for src in page.images:
        assert src.startswith("data:image/png;base64,")
        with Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))) as image:
            image.load()
            assert image.width > 0 and image.height > 0
    return page


@pytest.mark.parametrize("task", list(TASK_SECTIONS))
def test_train_writes_a_self_contained_report(task, runs):
    run = runs[task]
    page = check_page(run / "report.html")
    assert page.h2[2:-1] == TASK_SECTIONS[task]
    assert len(page.images) >= 1  # the per-image views: mistakes, boxes, triplets
    text = (run / "report.html").read_text()
    assert "<details><summary>config.yaml" in text and f"task: {task}" in text
    assert "best epoch" in text.lower() and "training time" in text
    # Curves: every panel is a real curve; constants are listed, not drawn.
    charts = [c for c in page.captions if c.startswith(("training", "validation", "learning"))]
    assert charts and not any("num_images" in c for c in charts), charts
    assert "training loss" in charts[0]


def test_classification_report_names_the_mistakes(runs):
    text = (runs["classification"] / "report.html").read_text()
    assert "The same at every epoch, so not drawn:" in text and "val/num_images = 60" in text
    # 60 validation images: all scanned; every mistake shown has a predicted and a true class.
    assert "on all 60 validation images" in text
    wrong = int(re.search(r"(\d+) wrong", text).group(1))
    assert text.count("true: <b>") == min(12, wrong)
    # The same checkpoint on the same images: the mistakes found are exactly what top-1 missed.
    best = RunView(runs["classification"]).best
    assert wrong == round((1 - best["top1"]) * 60)
    assert int(re.search(r"best.pt \(epoch (\d+)\)", text).group(1)) == best["epoch"] + 1


def test_report_command_rewrites_it_and_refuses_what_is_not_a_run(runs, tmp_path, capsys):
    run = runs["segmentation"]
    (run / "report.html").unlink()
    assert cli.main(["report", str(run)]) == 0
    assert capsys.readouterr().out.strip() == f"[visionkit] report: {run / 'report.html'}"
    check_page(run / "report.html")
    assert cli.main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"visionkit: error: {tmp_path}: not a visionkit run directory (no config.yaml)"


def test_a_run_in_an_object_store_gets_its_report_there(runs, s3, monkeypatch, tmp_path, capsys):
    """Read through a local copy of the run's files and best.pt; the page goes back to the store."""
    endpoint, client = s3
    for key, value in {**AWS_ENV, "AWS_ENDPOINT_URL": endpoint}.items():
        monkeypatch.setenv(key, value)
    run = runs["classification"]
    for path in run.rglob("*"):
        rel = path.relative_to(run).as_posix()
        if path.is_file() and rel != "report.html" and not rel.startswith("tensorboard"):
            client.put_object(Bucket=BUCKET, Key=f"reports/cls/{rel}", Body=path.read_bytes())
    assert cli.main(["report", f"s3://{BUCKET}/reports/cls"]) == 0
    assert capsys.readouterr().out.strip() == f"[visionkit] report: s3://{BUCKET}/reports/cls/report.html"
    page = tmp_path / "report.html"
    page.write_bytes(client.get_object(Bucket=BUCKET, Key="reports/cls/report.html")["Body"].read())
    check_page(page)
    assert f"from s3://{BUCKET}/reports/cls." in page.read_text()


def test_data_that_is_gone_leaves_the_rest_of_the_page(runs, tmp_path, capsys):
    """The per-image views need the validation images; without them the page says so in a line."""
    page = build_report(runs["detection"], [f"data.root={tmp_path / 'gone'}"])
    assert "Precision and recall" in page and "Not drawn: " in page
    note = re.search(r'<p class="note">Not drawn: ([^<]*)</p>', page).group(1)
    assert "\n" not in note and "gone" in note


def test_the_default_section_shows_the_plugins_visuals(runs):
    from visionkit.plugin import TaskPlugin

    view = RunView(runs["classification"])
    sections = TaskPlugin.report_sections(view.plugin, view)  # the base class's default
    assert [s.title for s in sections] == [f"classification: best epoch ({view.best_epoch + 1})"]
    assert sections[0].html.count("data:image/png;base64,") == 1  # confusion_matrix.png


def test_a_section_that_refers_outside_the_page_is_left_out(runs):
    view = RunView(runs["classification"])
    page = render(view, [ReportSection("Mine", '<img src="https://example.com/x.png">'),
                         ReportSection("Fine", '<a href="#curves">up</a>')], "test")
    assert "example.com" not in page and "Left out: this section refers to something outside the page" in page
    assert '<a href="#curves">up</a>' in page
    assert external_reference('<div style="background:url(pic.png)">') is not None
    assert external_reference('<img src="data:image/png;base64,AAAA">') is None


def test_curve_panels_skip_constants_and_count_whole_epochs():
    rows = [{"epoch": e, "lr": 0.003, "train/loss": 2.0 - e, "train/classification": 1.0 / (e + 1),
             "train/images_per_s": 100.0 + e, "val/top1": 0.5 + 0.1 * e, "val/num_images": 60,
             "time_s": 3.0, "end_unix": 1e9 + e} for e in range(3)]
    panels = curve_panels(rows, primary="top1", best_epoch=2)
    keys = [k for p in panels for k in p.keys]
    assert "val/num_images" not in keys and "lr" not in keys and "time_s" not in keys and "end_unix" not in keys
    assert panels[0].keys == ["train/loss", "train/classification"]
    assert next(p for p in panels if p.keys == ["val/top1"]).marker == 3
    assert constants(rows) == {"lr": 0.003, "val/num_images": 60}
    assert curve_panels(rows[:1]) == []  # one epoch: nothing is a curve yet
    assert integer_ticks(1, 3) == [1, 2, 3] and integer_ticks(1, 40) == [5, 10, 15, 20, 25, 30, 35, 40]


def test_a_third_party_plugin_adds_its_section(toy_plugin, tmp_path):
    config = tmp_path / "toy.yaml"
    config.write_text(yaml.safe_dump({
        "task": "toy", "train": {"epochs": 2, "batch_size": 32, "optimizer": {"name": "adam", "lr": 0.01}},
        "ray": {"num_workers": 0}, "output": {"storage_path": str(tmp_path), "name": "toy"}}))
    proc = run_cli("train", str(config))
    assert proc.returncode == 0, proc.stderr
    report = tmp_path / "toy" / "report.html"
    assert f"[visionkit] report: {report}" in proc.stdout
    page = check_page(report)
    assert page.h2 == ["The run", "Curves", "Toy: accuracy by distance from the boundary", "Config"]
    text = report.read_text()
    assert "val/seen = 100" in text  # the toy metric's constant count is listed, not drawn
    counts = [int(n) for n in re.findall(r"(\d+) vectors", text)]
    assert sum(counts) == 100  # every validation vector, through the plugin's own predictions
