"""Runtime choice and interpreter creation (real runtimes, real models)."""

from __future__ import annotations

import pytest

from edge_app.errors import ModelError, RuntimeNotFound
from edge_app.inference.runtime import default_threads, select_runtime

pytestmark = pytest.mark.core


def test_auto_prefers_litert_and_reports_its_version():
    runtime = select_runtime("auto")
    assert runtime.name == "litert"
    assert runtime.version[0].isdigit()
    assert runtime.describe() == f"litert {runtime.version}"


def test_forcing_a_missing_runtime_says_how_to_fix_it():
    with pytest.raises(RuntimeNotFound, match="tflite_runtime.*not installed"):
        select_runtime("tflite_runtime")


def test_unknown_runtime_name_lists_choices():
    with pytest.raises(RuntimeNotFound, match="choose one of auto, litert"):
        select_runtime("onnx")


def _op_names(interpreter) -> set[str]:
    return {op["op_name"] for op in interpreter._get_ops_details()}


def test_xnnpack_takes_the_graph_by_default_and_can_be_turned_off(int8_model):
    runtime = select_runtime()
    with_delegate = runtime.make_interpreter(int8_model, num_threads=1)
    without = runtime.make_interpreter(int8_model, num_threads=1, xnnpack=False)
    assert "DELEGATE" in _op_names(with_delegate)
    assert "DELEGATE" not in _op_names(without)


def test_default_threads_is_every_usable_core():
    import os

    assert default_threads() == len(os.sched_getaffinity(0))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "not a TFLite model"),
        (b"hello, this is a text file and not a model", "not a TFLite model"),
        (b"\x1c\x00\x00\x00TFL3" + b"\x00" * 64, "cannot load model"),
    ],
)
def test_corrupt_model_files_give_one_readable_line(tmp_path, content, message):
    path = tmp_path / "broken.tflite"
    path.write_bytes(content)
    with pytest.raises(ModelError, match=message) as info:
        select_runtime().make_interpreter(path, num_threads=1)
    assert "\n" not in str(info.value)


def test_missing_model_file_is_named(tmp_path):
    with pytest.raises(ModelError, match="model file not found: .*nope.tflite"):
        select_runtime().make_interpreter(tmp_path / "nope.tflite")


def test_truncated_real_model_is_refused(tmp_path, int8_model):
    path = tmp_path / "half.tflite"
    path.write_bytes(int8_model.read_bytes()[:200_000])
    with pytest.raises(ModelError):
        select_runtime().make_interpreter(path, num_threads=1)
