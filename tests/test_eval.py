"""`edge-app eval`: accuracy against truth from file names, folders and CSV files."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from edge_app.batch.evaluate import LabelMatcher, name_from_filename

pytestmark = pytest.mark.core


def edge_app(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edge_app", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def labels(shared_models):
    return (shared_models / "imagenet_labels.txt").read_text().splitlines()


def test_truth_from_file_names_matches_any_synonym(labels):
    matcher = LabelMatcher(labels)
    assert name_from_filename("n01440764_tench.JPEG") == "tench"
    assert matcher.match("tench") == {1}
    assert matcher.match("Great White Shark") == {3}  # first synonym, any case
    assert matcher.match("carcharodon carcharias") == {3}  # a later synonym
    assert matcher.match("crane") == {135, 518}  # two classes share this name
    assert matcher.match("no such class") == set()


@pytest.mark.slow
def test_eval_on_the_sample_reports_the_classify_figure(imagenet_sample, int8_model):
    result = edge_app("eval", imagenet_sample, "--truth", "filename", "--json", "-m", int8_model)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["images"] == report["evaluated"] == 1000
    assert report["top1"] >= 88.0
    assert report["top5"] >= report["top1"]
    assert report["confusions"] and report["worst_classes"]


def test_eval_slice_with_folder_truth(tmp_path, imagenet_sample, int8_model):
    """A folder-per-class layout (the common way people organise labelled photos)."""
    picks = sorted(imagenet_sample.iterdir())[::50]
    for photo in picks:
        class_name = photo.stem.split("_", 1)[1]
        folder = tmp_path / class_name
        folder.mkdir(exist_ok=True)
        os.symlink(photo, folder / f"photo{photo.suffix}")
    result = edge_app("eval", tmp_path, "--truth", "folder", "--json", "-m", int8_model)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["evaluated"] == len(picks) == 20
    assert report["top1"] >= 70.0


def test_eval_with_a_csv_of_truths(tmp_path, test_images, int8_model):
    truth = tmp_path / "truth.csv"
    truth.write_text("path,label\nparrot.jpg,macaw\nhot_dog.jpg,hotdog\ncat.bmp,286\n")
    files = [test_images / n for n in ("parrot.jpg", "hot_dog.jpg", "cat.bmp")]
    result = edge_app("eval", *files, "--truth", truth, "--json", "-m", int8_model)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["evaluated"] == 3 and report["top1"] == 100.0


def test_eval_human_report(test_images, int8_model):
    result = edge_app("eval", test_images / "parrot.jpg", "--truth", "filename", "-m", int8_model)
    # "parrot" is not a label: the user is told why nothing could be evaluated
    assert result.returncode == 2
    assert "no matching label" in result.stderr and "Traceback" not in result.stderr
