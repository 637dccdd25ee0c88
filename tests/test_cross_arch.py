"""The int8 model answers the same on a Raspberry Pi's CPU as on this x86 machine.

The aarch64 side is Debian's arm64 python with the project's aarch64 wheels, run by QEMU
user-mode emulation as a Cortex-A72 (Pi 4) or Cortex-A76 (Pi 5); `make test-arm` builds
it (scripts/arm-env.sh). Both sides run the real `edge-app classify` on the same files;
top-1 must be identical and scores within 0.02.

ARM_TARGETS picks the emulated machines, as RELEASE:CPU words (default "bookworm:a72");
a target whose environment is not built is skipped, with the command that builds it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest

pytestmark = pytest.mark.arm

ROOT = Path(__file__).resolve().parent.parent
ARM_ENV = ROOT / "scripts" / "arm-env.sh"
ARM_PYTHON = ROOT / "scripts" / "arm-python.sh"
TARGETS = os.environ.get("ARM_TARGETS", "bookworm:a72").split()
SCORE_TOLERANCE = 0.02
# Emulation runs the int8 model at about 0.7 s an image; 63 images need about a minute.
EMULATED_TIMEOUT_S = 900


def photo_set(test_images: Path, imagenet_sample: Path) -> list[Path]:
    """Every test photo and every 20th photo of the 1,000-image sample (50)."""
    photos = sorted(p for p in test_images.iterdir() if p.is_file())
    return photos + sorted(imagenet_sample.iterdir())[::20]


def classify(python: list[str], photos: list[Path], model: Path) -> dict[str, dict]:
    """`edge-app classify --format jsonl` under the given interpreter: path -> record."""
    command = [*python, "-m", "edge_app", "classify", *map(str, photos)]
    command += ["--model", str(model), "--format", "jsonl", "--top-k", "5"]
    result = subprocess.run(
        command, capture_output=True, text=True, cwd=ROOT, timeout=EMULATED_TIMEOUT_S
    )
    assert result.returncode == 0, f"{' '.join(command[:4])} failed:\n{result.stderr[-2000:]}"
    records = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    return {record["path"]: record for record in records}


class ArmPython(NamedTuple):
    target: str  # RELEASE:CPU
    command: list[str]  # runs the emulated python


@pytest.fixture(params=TARGETS)
def arm_python(request) -> ArmPython:
    """The emulated python for RELEASE:CPU, or a skip saying why it cannot run."""
    release, _, cpu = request.param.partition(":")
    if shutil.which("qemu-aarch64-static") is None:
        pytest.skip("qemu-aarch64-static is not installed (apt-get install qemu-user-static)")
    built = subprocess.run(["bash", str(ARM_ENV), "--check", release], capture_output=True)
    if built.returncode != 0:
        pytest.skip(f"aarch64 {release} environment not built: run make test-arm")
    command = ["bash", str(ARM_PYTHON), "--release", release, "--cpu", cpu or "a72"]
    return ArmPython(request.param, command)


@pytest.fixture(scope="module")
def photos(test_images, imagenet_sample) -> list[Path]:
    return photo_set(test_images, imagenet_sample)


@pytest.fixture(scope="module")
def x86_answers(photos, int8_model) -> dict[str, dict]:
    answers = classify([sys.executable], photos, int8_model)
    assert len(answers) == len(photos) and all(r["ok"] for r in answers.values())
    return answers


def test_emulated_python_is_aarch64_with_litert(arm_python):
    probe = (
        "import json, platform; from edge_app.inference.runtime import select_runtime; r = select_runtime();"
        "print(json.dumps({'machine': platform.machine(), 'runtime': r.name}))"
    )
    result = subprocess.run(
        [*arm_python.command, "-c", probe], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout.strip().splitlines()[-1])
    assert info == {"machine": "aarch64", "runtime": "litert"}


def test_aarch64_answers_match_x86(arm_python, photos, int8_model, x86_answers, imagenet_sample):
    target = arm_python.target
    arm_answers = classify(arm_python.command, photos, int8_model)
    assert sorted(arm_answers) == sorted(x86_answers)
    failed = [path for path, record in arm_answers.items() if not record["ok"]]
    assert not failed, f"not classified on {target}: {failed}"

    top1_differs, scores_differ = [], []
    for path, x86 in x86_answers.items():
        arm = arm_answers[path]
        x86_top, arm_top = x86["top"][0], arm["top"][0]
        name = Path(path).name
        if x86_top["index"] != arm_top["index"]:
            top1_differs.append(
                f"{name}: x86 {x86_top['label']} {x86_top['score']:.3f}, "
                f"{target} {arm_top['label']} {arm_top['score']:.3f}"
            )
        arm_scores = {p["index"]: p["score"] for p in arm["top"]}
        for prediction in x86["top"]:
            other = arm_scores.get(prediction["index"])
            if other is not None and abs(other - prediction["score"]) > SCORE_TOLERANCE:
                scores_differ.append(
                    f"{name}: {prediction['label']} x86 {prediction['score']:.3f}, "
                    f"{target} {other:.3f}"
                )
    assert not top1_differs, "top-1 differs:\n" + "\n".join(top1_differs)
    assert not scores_differ, f"scores differ by more than {SCORE_TOLERANCE}:\n" + "\n".join(
        scores_differ
    )
    # Equal answers are worth having only if they are right: file k of the sorted
    # sample is class k + 1.
    sample = sorted(imagenet_sample.iterdir())
    right = sum(arm_answers[str(sample[k])]["top"][0]["index"] == k + 1 for k in range(0, 1000, 20))
    assert right >= 40, f"only {right} of 50 sample photos right on {target}"
