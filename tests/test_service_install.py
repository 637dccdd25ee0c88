"""The systemd unit (checked by systemd-analyze) and the Raspberry Pi installer
(checked by shellcheck and run with --dry-run, which changes nothing)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from service_support import ROOT

UNIT = ROOT / "systemd" / "edge-app.service"
INSTALLER = ROOT / "scripts" / "install-pi.sh"


def unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def need(tool: str, package: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} is not installed (Debian package {package}; "
                    "scripts/install-test-deps.sh installs it)")  # fmt: skip
    return path


def test_the_unit_is_a_hardened_notify_service():
    s = unit_settings()
    assert s["Type"] == ["notify"]
    assert s["Restart"] == ["on-failure"]
    assert s["ExecStart"][0].endswith("edge-app serve --config /etc/edge-app/config.toml")
    assert "-HUP" in s["ExecReload"][0]
    assert int(s["WatchdogSec"][0]) > 0
    assert s["User"] == ["edge-app"] and s["SupplementaryGroups"] == ["video"]
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "StateDirectory": "edge-app",
    }.items():
        assert s[key] == [value], key
    assert "ReadWritePaths" not in s  # the state folder is the only writable place
    assert s["StandardError"] == ["journal"]


def test_systemd_analyze_verify_accepts_the_unit(tmp_path):
    analyze = need("systemd-analyze", "systemd")
    # The unit's ExecStart must exist for verify: point it at this checkout's edge-app.
    edge_app = Path(sys.executable).parent / "edge-app"
    assert edge_app.exists(), f"{edge_app} missing: install the project (make install)"
    text = UNIT.read_text().replace("/opt/edge-app/venv/bin/edge-app", str(edge_app))
    unit = tmp_path / "edge-app.service"
    unit.write_text(text)
    done = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "edge-app.service" not in done.stderr, done.stderr  # no warnings about it

    security = subprocess.run(
        [analyze, "security", "--offline=yes", str(unit)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    if security.returncode == 0 or "Overall exposure" in security.stdout:
        exposure = float(re.search(r"Overall exposure level for \S+: ([\d.]+)",
                                   security.stdout).group(1))  # fmt: skip
        assert exposure <= 3.0, security.stdout[-2000:]


def test_the_installer_passes_shellcheck():
    shellcheck = need("shellcheck", "shellcheck")
    done = subprocess.run([shellcheck, str(INSTALLER)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout


def installer(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(INSTALLER), *args], capture_output=True, text=True, timeout=120
    )


def test_the_installer_explains_itself_and_refuses_bad_options():
    done = installer("--help")
    assert done.returncode == 0
    for word in ("--uninstall", "--purge", "--dry-run", "--system-site-packages", "video"):
        assert word in done.stdout
    done = installer("--bogus")
    assert done.returncode == 2 and "unknown option: --bogus" in done.stderr
    assert installer("--purge").returncode == 2  # only with --uninstall


def test_the_installer_dry_run_lists_every_step_and_changes_nothing(tmp_path):
    before = {
        p: p.exists() for p in (Path("/opt/edge-app"), Path("/etc/systemd/system/edge-app.service"))
    }
    done = installer("--dry-run")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    steps = [
        r"\+ apt-get update",
        r"apt-get install -y --no-install-recommends .*python3-opencv",
        r"\+ useradd --system .* edge-app|service user edge-app",
        r"\+ usermod --append --groups video edge-app",
        r"python3 -m venv --system-site-packages /opt/edge-app/venv|program in /opt/edge-app",
        r"pip install .*--constraint",
        r"models fetch mobilenet_v1_1\.0_224_int8",
        r"config check /etc/edge-app/config\.toml",
        r"\+ install -m 0644 .*systemd/edge-app\.service /etc/systemd/system/edge-app\.service",
    ]
    for step in steps:
        assert re.search(step, out), f"missing step {step!r} in:\n{out}"
    assert {p: p.exists() for p in before} == before

    done = installer("--uninstall", "--purge", "--dry-run")
    assert done.returncode == 0, done.stderr
    assert "purging configuration, data and the service user" in done.stdout
    assert "edge-app mqtt unpublish --if-enabled --config /etc/edge-app/config.toml" in done.stdout
