"""Task options: declared by the task runtime, checked once, refused when undeclared.

``predict`` flags and ``serve`` query parameters come from the same declarations; an option the
model's task does not declare is one line (exit 2 / HTTP 400), never silently ignored. A tiny
hand-made classifier keeps these tests free of training.
"""

from __future__ import annotations

import pytest

from visionkit import cli
from visionkit.runtime import Model, Option, OptionError
from visionkit.runtime.options import resolve

from servehelp import png, tiny_classifier


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_classifier(tmp_path_factory.mktemp("options") / "tiny.onnx")


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    path = tmp_path_factory.mktemp("options_img") / "red.png"
    path.write_bytes(png((220, 30, 20)))
    return path


def test_an_option_checks_type_range_and_choices():
    k = Option("top_k", int, 2, "classes", min=1, max=3)
    assert k.flag == "--top-k" and k.parse("3") == 3
    for text, message in (("two", "expected int"), ("9", "expected 1 to 3"), ("1.5", "expected int")):
        with pytest.raises(OptionError, match=message):
            k.parse(text)
    assert Option("t", float, min=0.0).parse("1") == 1.0
    with pytest.raises(OptionError, match="finite"):
        Option("t", float).parse("nan")
    assert Option("on", bool).parse("Yes") is True and Option("on", bool).parse("0") is False
    with pytest.raises(OptionError, match="expected one of a, b"):
        Option("mode", str, choices=("a", "b")).parse("c")
    with pytest.raises(Exception, match="lower-case identifier"):
        Option("Top-K", int)
    with pytest.raises(Exception, match="expected 1 to 3"):
        Option("top_k", int, 7, min=1, max=3)  # a plugin's own default out of range: its bug, said at once
    # every declared option comes back (given, or its default); an undeclared one is refused
    assert resolve([k], {}, "classification") == {"top_k": 2}
    with pytest.raises(OptionError, match=r"option 'topk': a classification model takes no such option \(it takes top_k\)"):
        resolve([k], {"topk": 1}, "classification")
    assert k.to_json() == {"name": "top_k", "type": "int", "default": 2, "help": "classes", "min": 1, "max": 3,
                           "choices": None}


def test_the_model_takes_its_task_options_only(tiny, image):
    model = Model.load(tiny)
    assert [o.name for o in model.options] == ["top_k"] and model.options[0].max == 3
    assert len(model.predict(image, top_k=2)[0]["top_k"]) == 2
    assert len(model.predict(image)[0]["top_k"]) == 3  # the default: 5, at most the classes
    with pytest.raises(OptionError, match=r"tiny.onnx: option 'score_thresh': a classification model takes no such"):
        model.predict(image, score_thresh=0.5)
    with pytest.raises(OptionError, match=r"option top_k=0: expected 1 to 3"):
        model.predict(image, top_k=0)


def _one_line(capsys, argv: list[str], code: int = 2) -> str:
    assert cli.main(argv) == code
    err = capsys.readouterr().err.strip()
    assert err.startswith("visionkit: error: ") and "\n" not in err, err
    return err


def test_predict_flags_come_from_the_model_and_others_are_refused_in_one_line(tiny, image, tmp_path, capsys):
    out = tmp_path / "out"
    # the flag may come before MODEL too
    assert cli.main(["predict", "--top-k", "1", str(tiny), str(image), "-o", str(out)]) == 0
    assert "classification: 1 image(s)" in capsys.readouterr().out
    err = _one_line(capsys, ["predict", str(tiny), str(image), "-o", str(out), "--score-thresh", "0.5"])
    assert "predict: --score-thresh: a classification model takes no such option (its options: --top-k" in err
    err = _one_line(capsys, ["predict", str(tiny), str(image), "--decimals=2"])
    assert "--decimals: a classification model takes no such option" in err
    err = _one_line(capsys, ["predict", str(tiny), str(image), "--top-k", "9"])
    assert err.endswith("predict: --top-k 9: expected 1 to 3")
    err = _one_line(capsys, ["predict", str(tmp_path / "missing.onnx"), str(image), "--top-k", "2"])
    assert "missing.onnx: no such model file" in err


def test_predict_help_lists_the_model_options(tiny, capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(["predict", str(tiny), "--help"])
    assert done.value.code == 0
    shown = capsys.readouterr().out
    assert "options of this classification model" in shown and "--top-k INT" in shown and "default 3" in shown
    with pytest.raises(SystemExit):
        cli.main(["predict", "--help"])
    assert "MODEL.onnx --help" in capsys.readouterr().out  # without a model: where the options are


def test_serve_refuses_an_option_of_another_task_in_one_line(tiny):
    import asyncio

    from visionkit.serving.limits import RequestError
    from visionkit.serving.service import InferenceService

    service = InferenceService(Model.load(tiny))
    try:
        assert service.options({"top_k": "2"}) == {"top_k": 2}
        assert service.options({}) == {"top_k": 3}
        with pytest.raises(RequestError) as info:
            service.options({"score_thresh": "0.5"})
        assert info.value.status == 400 and info.value.message == (
            "unknown query parameter 'score_thresh'; this classification model's /predict takes top_k")
        assert service.describe_options() == {"task": "classification", "options": [
            {"name": "top_k", "type": "int", "default": 3, "help": "classes per image, best first", "min": 1,
             "max": 3, "choices": None}]}
    finally:
        asyncio.run(service.close())
