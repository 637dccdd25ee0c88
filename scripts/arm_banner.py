"""Prints what the emulated run really is, before its tests: machine, CPU, Python,
TFLite runtime and library versions. Exits 1 unless the machine is aarch64."""

from __future__ import annotations

import os
import platform
import sys


def cpu_model() -> str:
    """The board as /proc/cpuinfo tells it (QEMU serves the -L root's copy)."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("Model"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def main() -> int:
    import cv2
    import numpy

    from edge_app.inference.runtime import select_runtime

    runtime = select_runtime("auto")
    machine = platform.machine()
    print(
        f"arm: machine {machine}, QEMU cpu {os.environ.get('QEMU_CPU', '?')} ({cpu_model()}), "
        f"Python {platform.python_version()}, runtime {runtime.describe()}, "
        f"numpy {numpy.__version__}, OpenCV {cv2.__version__}",
        flush=True,
    )
    if machine != "aarch64":
        print(f"arm: error: expected aarch64, this python runs on {machine}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
