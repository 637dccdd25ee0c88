"""The fault table of issue 17 as one suite: what edge-app guarantees (README, "What
edge-app guarantees") under odd file names, full and read-only disks, signals at random
points, broken config files and misbehaving HTTP clients.

Every case checks what a user would: the exit code, one `edge-app: error:` line and no
traceback, output files of whole records holding every input exactly once, no hang.
Loopback only; each case is bounded by a timeout.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
from service_support import NotifySocket, ServiceProcess, demo_config, free_port, to_toml

from edge_app.text import plural


def csv_path_cell(path: str) -> str:
    from edge_app.batch.records import csv_path_cell

    return csv_path_cell(path)


pytestmark = pytest.mark.timeout(300)

ROOT = Path(__file__).resolve().parent.parent
RNG = random.Random(17)  # random points, the same on every run


def edge_app(*args, timeout=180, env=None, **kwargs) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_APP_")}
    environ.update(env or {})
    kwargs.setdefault("stdout", subprocess.PIPE)
    kwargs.setdefault("stderr", subprocess.PIPE)
    return subprocess.run(
        [sys.executable, "-m", "edge_app", *map(os.fsdecode, args)],
        text=True,
        errors="backslashreplace",
        timeout=timeout,
        env=environ,
        cwd=kwargs.pop("cwd", None),
        **kwargs,
    )


def one_error(result, code: int = 2, contains: str = "") -> str:
    """The run ended with ``code`` and said why in exactly one line, without a traceback."""
    assert result.returncode == code, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("edge-app: error:")]
    assert len(errors) == 1, result.stderr
    assert contains in errors[0], errors[0]
    return errors[0]


# -- odd file names ------------------------------------------------------------------------
ODD_NAMES = [
    b"bad\xff\xfe.jpg",  # not UTF-8
    b"\xff.jpg",
    b"\\xff.jpg",  # what a naive escape of the one above would look like
    b"\xed\xa0\x80surrogate.jpg",  # an encoded surrogate: not UTF-8 either
    b"new\nline.jpg",
    b"tab\there.jpg",
    b"cr\rname.jpg",
    b'double"quote.jpg',
    b"single'quote.jpg",
    b"comma,name.jpg",
    b"back\\slash.jpg",
    "line\u2028separator.jpg".encode(),
    "next\u0085line.jpg".encode(),
    "emoji \U0001f600.jpg".encode(),
    b" leading space.jpg",
    b"-dash.jpg",
    b"L" * 240 + b".jpg",  # near NAME_MAX
]


@pytest.fixture(scope="module")
def odd_folder(tmp_path_factory, test_images) -> Path:
    folder = tmp_path_factory.mktemp("odd")
    photos = sorted(p for p in test_images.iterdir() if p.suffix == ".jpg")
    for index, name in enumerate(ODD_NAMES):
        shutil.copyfile(photos[index % len(photos)], os.path.join(os.fsencode(folder), name))
    (folder / "plain.jpg").write_bytes(photos[0].read_bytes())
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    return folder


def expected_paths(folder: Path) -> list[str]:
    """The paths classify reports: str, with surrogate escapes for bytes not UTF-8."""
    return [
        os.fsdecode(os.path.join(os.fsencode(folder), n)) for n in os.listdir(os.fsencode(folder))
    ]


def jsonl_paths(data: bytes) -> list[str]:
    assert data.endswith(b"\n"), data[-80:]
    data.decode("utf-8")  # the whole file is UTF-8
    return [json.loads(line)["path"] for line in data.split(b"\n")[:-1]]


def csv_cells(data: bytes) -> list[str]:
    assert data.endswith(b"\n"), data[-80:]
    rows = list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))
    assert rows[0][:2] == ["path", "ok"]
    return [row[0] for row in rows[1:]]


def test_every_odd_name_is_one_whole_record_in_jsonl_and_csv(odd_folder, int8_model, tmp_path):
    expected = expected_paths(odd_folder)
    out = tmp_path / "out.jsonl"
    result = edge_app("classify", odd_folder, "-m", int8_model, "-o", out)
    assert result.returncode == 1, result.stderr  # broken.jpg failed, the rest did not
    assert "Traceback" not in result.stderr
    assert Counter(jsonl_paths(out.read_bytes())) == Counter(expected)
    # The same records on stdout (JSONL off a terminal).
    piped = edge_app("classify", odd_folder, "-m", int8_model)
    assert Counter(jsonl_paths(piped.stdout.encode())) == Counter(expected)

    out_csv = tmp_path / "out.csv"
    result = edge_app("classify", odd_folder, "-m", int8_model, "-f", "csv", "-o", out_csv)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    cells = csv_cells(out_csv.read_bytes())
    assert Counter(cells) == Counter(csv_path_cell(p) for p in expected)
    assert len(set(cells)) == len(expected)  # one to one: "\xff" and b"\xff" differ

    table = edge_app("classify", odd_folder, "-m", int8_model, "-f", "table")
    assert table.returncode == 1 and "Traceback" not in table.stderr


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_resume_after_any_number_of_cuts_gives_each_input_once(
    fmt, odd_folder, int8_model, tmp_path
):
    expected = expected_paths(odd_folder)
    want = Counter(expected if fmt == "jsonl" else [csv_path_cell(p) for p in expected])
    read = jsonl_paths if fmt == "jsonl" else csv_cells
    out = tmp_path / f"out.{fmt}"
    first = edge_app("classify", odd_folder, "-m", int8_model, "-f", fmt, "-o", out, "-w", "1")
    assert first.returncode == 1, first.stderr
    full = out.read_bytes()
    # Cut points: inside the record holding a newline, at random, one byte short of the
    # end, and none (a finished file must gain nothing).
    inside = full.index(b"new\nline" if fmt == "csv" else b"new\\nline") + 4
    for cut in (inside, RNG.randrange(1, len(full)), len(full) - 1, len(full)):
        out.write_bytes(out.read_bytes()[: min(cut, out.stat().st_size)])
        again = edge_app(
            "classify", odd_folder, "-m", int8_model, "-f", fmt, "-o", out, "--resume", "-w", "1"
        )
        assert again.returncode in (0, 1), again.stderr
        assert "Traceback" not in again.stderr
        assert Counter(read(out.read_bytes())) == want


def test_resume_reading_splits_records_at_newlines_only():
    from edge_app.batch.records import _csv_done, _jsonl_done

    records = [{"path": p, "ok": True} for p in ("a\u2028b.jpg", "c\u0085d.jpg", "e\x0cf.jpg")]
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode()
    done, whole = _jsonl_done(data + b'{"path": "half')
    assert done == {r["path"] for r in records} and whole == len(data)
    rows = b'path,ok\n"x\ry.jpg",true\n"new\nline.jpg",true\n"cut\nin'
    done, whole = _csv_done(rows)
    assert done == {"x\ry.jpg", "new\nline.jpg"} and rows[whole:] == b'"cut\nin'


# -- the disk: full, read-only, not a folder ----------------------------------------------
@contextlib.contextmanager
def small_tmpfs(folder: Path, size: str):
    folder.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def test_a_full_disk_leaves_whole_records_and_resume_finishes(test_images, int8_model, tmp_path):
    with small_tmpfs(tmp_path / "small", "4k") as small:
        out = small / "out.jsonl"
        result = edge_app("classify", test_images, "-m", int8_model, "-o", out)
        one_error(result, 2, "No space left on device")
        data = out.read_bytes()
        assert 0 < len(data) and data.endswith(b"\n")
        written = jsonl_paths(data)
        assert len(written) < 13
        shutil.copyfile(out, tmp_path / "out.jsonl")
    roomy = tmp_path / "out.jsonl"
    again = edge_app("classify", test_images, "-m", int8_model, "-o", roomy, "--resume")
    assert again.returncode == 0, again.stderr
    assert f"{len(written)} already in" in again.stderr
    assert sorted(jsonl_paths(roomy.read_bytes())) == sorted(str(p) for p in test_images.iterdir())


def test_a_read_only_folder_is_one_line_exit_2(test_images, int8_model, tmp_path):
    with small_tmpfs(tmp_path / "ro", "64k") as folder:
        (folder / "old.jsonl").write_text("")
        subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
        result = edge_app("classify", test_images, "-m", int8_model, "-o", folder / "new.jsonl")
        one_error(result, 2, "Read-only file system")
        result = edge_app(
            "classify", test_images, "-m", int8_model, "-o", folder / "old.jsonl", "--resume"
        )
        one_error(result, 2, "Read-only file system")


@pytest.mark.parametrize(
    "where, message",
    [
        ("/dev/full", "No space left on device"),
        ("{tmp}/afile/out.jsonl", "not a folder"),
        ("{tmp}/afile/deeper/out.jsonl", "Not a directory"),
        ("{tmp}", "is a folder"),
    ],
)
def test_output_write_errors_are_one_line_exit_2(where, message, test_images, int8_model, tmp_path):
    (tmp_path / "afile").write_text("a file, not a folder\n")
    out = where.format(tmp=tmp_path)
    one_error(edge_app("classify", test_images, "-m", int8_model, "-o", out), 2, message)


def test_stdout_on_a_full_disk_or_a_closed_pipe_is_one_line_exit_2(test_images, int8_model):
    with open("/dev/full", "w") as full:
        result = edge_app("classify", test_images, "-m", int8_model, stdout=full)
    one_error(result, 2, "No space left on device")
    read, write = os.pipe()
    os.close(read)  # nobody reads: the first record meets a closed pipe
    with os.fdopen(write, "w") as closed:
        result = edge_app("classify", test_images, "-m", int8_model, stdout=closed)
    one_error(result, 2, "Broken pipe")


def test_an_output_fifo_nobody_reads_is_one_line_not_a_hang(test_images, int8_model, tmp_path):
    os.mkfifo(tmp_path / "out.jsonl")
    result = edge_app("classify", test_images, "-m", int8_model, "-o", tmp_path / "out.jsonl")
    one_error(result, 2, "a FIFO nobody reads")


@pytest.mark.parametrize("command", [("models", "list"), ("config", "show")])
def test_other_commands_on_a_closed_pipe_or_a_full_disk_are_one_line_exit_2(command):
    read, write = os.pipe()
    os.close(read)
    with os.fdopen(write, "w") as closed:
        one_error(edge_app(*command, stdout=closed), 2, "Broken pipe")
    with open("/dev/full", "w") as full:
        one_error(edge_app(*command, stdout=full), 2, "No space left on device")


def test_resume_keeps_to_the_file_it_continues(test_images, int8_model, tmp_path):
    out = tmp_path / "out.csv"  # the suffix says CSV: no --format needed
    first = edge_app("classify", test_images, "-m", int8_model, "-o", out, "-k", "3")
    assert first.returncode == 0 and out.read_bytes().startswith(b"path,ok,index1")
    out.write_bytes(out.read_bytes()[:-30])
    # Another format or other columns would mix records: refused, the file untouched.
    before = out.read_bytes()
    for args in (("-f", "jsonl"), ("-k", "5")):
        result = edge_app("classify", test_images, "-m", int8_model, "-o", out, "--resume", *args)
        one_error(result, 2, "--resume")
        assert out.read_bytes() == before
    again = edge_app("classify", test_images, "-m", int8_model, "-o", out, "--resume", "-k", "3")
    assert again.returncode == 0, again.stderr
    assert sorted(csv_cells(out.read_bytes())) == sorted(str(p) for p in test_images.iterdir())


def test_an_input_named_twice_is_one_record(test_images, int8_model):
    photo = sorted(test_images.iterdir())[0]
    result = edge_app("classify", test_images, photo, photo, test_images / "*", "-m", int8_model)
    assert result.returncode == 0, result.stderr
    paths = jsonl_paths(result.stdout.encode())
    assert len(paths) == len(set(paths)) == 13


# -- signals at random points ----------------------------------------------------------------
@pytest.fixture(scope="module")
def hundred_photos(tmp_path_factory, imagenet_sample) -> Path:
    folder = tmp_path_factory.mktemp("hundred")
    for photo in sorted(imagenet_sample.iterdir())[:100]:
        os.symlink(photo, folder / photo.name)
    return folder


def test_sigterm_and_ctrl_c_at_random_points_then_resume_gives_each_input_once(
    hundred_photos, int8_model, tmp_path
):
    out = tmp_path / "out.jsonl"
    cmd = [sys.executable, "-m", "edge_app", "classify", str(hundred_photos), "-o", str(out)]
    cmd += ["-m", str(int8_model), "-w", "2"]
    for cycle, signum in enumerate([signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGTERM]):
        before = len(jsonl_paths(out.read_bytes())) if out.exists() else 0
        target = before + RNG.randrange(1, 20)
        proc = subprocess.Popen(
            cmd + (["--resume"] if cycle else []), stderr=subprocess.PIPE, text=True
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if out.exists() and out.read_bytes().count(b"\n") >= target:
                break
            time.sleep(0.02)
        proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 128 + signum, stderr
        assert "Traceback" not in stderr and "BrokenPipe" not in stderr, stderr
        word = "interrupted" if signum == signal.SIGINT else "terminated"
        assert f"edge-app: {word} after" in stderr and "rerun with --resume" in stderr
        paths = jsonl_paths(out.read_bytes())  # whole lines only
        assert len(paths) == len(set(paths)) < 100
    final = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, timeout=180)
    assert final.returncode == 0, final.stderr
    paths = jsonl_paths(out.read_bytes())
    assert len(paths) == len(set(paths)) == 100


def test_a_killed_worker_ends_the_run_in_one_line_and_resume_finishes(
    hundred_photos, int8_model, tmp_path
):
    """The OOM killer on a small Pi: multiprocessing.Pool would wait forever."""
    out = tmp_path / "out.jsonl"
    cmd = [sys.executable, "-m", "edge_app", "classify", str(hundred_photos), "-o", str(out)]
    cmd += ["-m", str(int8_model), "-w", "2"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (out.exists() and out.read_bytes().count(b"\n")):
        time.sleep(0.02)
    workers = [
        int(pid) for pid in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    ]
    assert workers, "no worker processes"
    os.kill(workers[0], signal.SIGKILL)
    _, stderr = proc.communicate(timeout=60)  # a hang fails here
    if proc.returncode != 0:  # (unless the run had just finished)
        assert proc.returncode == 2, stderr
        assert "Traceback" not in stderr and "worker process was killed" in stderr, stderr
    paths = jsonl_paths(out.read_bytes())
    assert len(paths) == len(set(paths))
    final = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, timeout=180)
    assert final.returncode == 0, final.stderr
    paths = jsonl_paths(out.read_bytes())
    assert len(paths) == len(set(paths)) == 100


def test_a_killed_parent_takes_its_workers_along_quietly(hundred_photos, int8_model, tmp_path):
    """SIGKILL cannot be handled; the workers must not outlive it writing BrokenPipe
    tracebacks, and the output still holds whole lines that --resume continues."""
    out = tmp_path / "out.jsonl"
    cmd = [sys.executable, "-m", "edge_app", "classify", str(hundred_photos), "-o", str(out)]
    cmd += ["-m", str(int8_model), "-w", "2"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (out.exists() and out.read_bytes().count(b"\n")):
        time.sleep(0.02)
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    proc.kill()
    _, stderr = proc.communicate(timeout=30)  # returns once the workers closed stderr too
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr, stderr
    for pid in children:
        deadline = time.monotonic() + 10
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (
            not Path(f"/proc/{pid}").exists()
            or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
        )
    final = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, timeout=180)
    assert final.returncode == 0, final.stderr
    paths = jsonl_paths(out.read_bytes())
    assert len(paths) == len(set(paths)) == 100


def test_sigterm_while_the_model_loads_is_one_line_exit_143(test_images, int8_model):
    for delay in (0.8, 1.2, 1.6):
        proc = subprocess.Popen(
            [sys.executable, "-m", "edge_app", "classify", str(test_images), "-m", str(int8_model)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(delay)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
        if "done:" in stderr:
            continue  # it finished first (a signal while the interpreter exits is SIG_DFL)
        assert proc.returncode == 143, stderr
        assert "Traceback" not in stderr and "terminated" in stderr, stderr


# -- options -------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "-0.5", "1.5", "half"])
def test_threshold_must_be_a_finite_number_from_0_to_1(value, test_images):
    one_error(edge_app("classify", test_images, "--threshold", value), 2, "--threshold")


def test_workers_are_capped_to_cores_and_inputs(test_images, int8_model):
    photos = sorted(test_images.iterdir())[:2]
    result = edge_app("classify", test_images, "-m", int8_model, "--workers", "100")
    assert result.returncode == 0, result.stderr
    cores = len(os.sched_getaffinity(0))
    assert f"{plural(min(cores, 13), 'worker')} x" in result.stderr
    result = edge_app("classify", *photos, "-m", int8_model, "--workers", "100")
    assert result.returncode == 0, result.stderr
    assert f"{plural(min(cores, 2), 'worker')} x" in result.stderr


def test_workers_are_capped_to_memory():
    from edge_app.batch.workers import WORKER_BYTES, plan_workers

    workers, _ = plan_workers(100, None, inputs=1000, memory=4 * WORKER_BYTES)
    assert workers <= 2


def test_usage_errors_are_one_line(tmp_path):
    one_error(edge_app("classify"), 2, "Missing argument")
    one_error(edge_app("classify", tmp_path, "--top-k", "0"), 2, "--top-k")
    one_error(edge_app("no-such-command"), 2, "No such command")


# -- broken config files: `config check` and `serve` agree, in one line, without hanging ----
def service_config(tmp_path: Path, demo_video, int8_model, **sections) -> Path:
    document = demo_config(demo_video, int8_model, tmp_path / "state", free_port(), **sections)
    path = tmp_path / "config.toml"
    path.write_text(to_toml(document))
    return path


def check_and_serve_refuse(config: Path, contains: str, env=None) -> None:
    """`config check` and `serve` both say ``contains`` in one line, exit 2, promptly."""
    one_error(edge_app("config", "check", config, env=env, timeout=60), 2, contains)
    started = time.monotonic()
    one_error(edge_app("serve", "--config", config, env=env, timeout=60), 2, contains)
    assert time.monotonic() - started < 60


def test_a_state_dir_that_is_a_file(tmp_path, demo_video, int8_model):
    (tmp_path / "state").write_text("a file where the state folder should be\n")
    config = service_config(tmp_path, demo_video, int8_model, eventlog={"path": "events.jsonl"})
    check_and_serve_refuse(config, "is not a folder")


def test_an_unwritable_state_dir_and_snapshot_folder(tmp_path, demo_video, int8_model):
    with small_tmpfs(tmp_path / "ro", "64k") as folder:
        subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
        config = service_config(
            tmp_path,
            demo_video,
            int8_model,
            service={"state_dir": str(folder / "state")},
            trigger=[{"pattern": "macaw"}],
        )
        check_and_serve_refuse(config, "trigger[1].dir")
        config = service_config(
            tmp_path, demo_video, int8_model, eventlog={"path": str(folder / "events.jsonl")}
        )
        check_and_serve_refuse(config, "eventlog.path")


def test_an_event_log_that_is_a_fifo(tmp_path, demo_video, int8_model):
    os.mkfifo(tmp_path / "events.jsonl")  # opening it for writing would block forever
    config = service_config(
        tmp_path, demo_video, int8_model, eventlog={"path": str(tmp_path / "events.jsonl")}
    )
    check_and_serve_refuse(config, "not a regular file")


def test_a_garbage_mqtt_ca_file(tmp_path, demo_video, int8_model):
    (tmp_path / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\ngarbage\n")
    config = service_config(
        tmp_path,
        demo_video,
        int8_model,
        mqtt={"enabled": True, "port": free_port(), "tls": {"enabled": True, "ca": "ca.pem"}},
    )
    check_and_serve_refuse(config, "mqtt.tls.ca")


def test_an_unknown_model_name_and_a_missing_model_file(tmp_path, demo_video, int8_model):
    config = service_config(tmp_path, demo_video, "mobilenet_v9_nonsense")
    one_error(edge_app("config", "check", config), 2, "unknown model 'mobilenet_v9_nonsense'")
    config = service_config(tmp_path, demo_video, tmp_path / "gone.tflite")
    one_error(edge_app("config", "check", config), 2, "no such file")


def test_a_missing_video_file(tmp_path, int8_model):
    config = service_config(tmp_path, tmp_path / "gone.mp4", int8_model)
    check_and_serve_refuse(config, "gone.mp4: no such file")


def test_config_check_loads_the_model_as_serve_would(tmp_path, demo_video):
    (tmp_path / "corrupt.tflite").write_bytes(b"TFL3" + b"\0" * 100)
    config = service_config(tmp_path, demo_video, tmp_path / "corrupt.tflite")
    one_error(edge_app("config", "check", config), 2, "not a TFLite model")


def test_a_good_config_passes_the_check(tmp_path, demo_video, int8_model):
    config = service_config(tmp_path, demo_video, int8_model, eventlog={"path": "events.jsonl"})
    result = edge_app("config", "check", config)
    assert result.returncode == 0, result.stderr
    assert f"model file: {int8_model}" in result.stdout
    assert not (tmp_path / "state").exists()  # a check leaves nothing behind


def test_an_environment_variable_does_not_hide_an_error_in_the_file(
    tmp_path, demo_video, int8_model
):
    config = service_config(tmp_path, demo_video, int8_model)
    text = config.read_text().replace("[web]\n", '[web]\nmax_fps = "fast"\n')
    config.write_text(text)
    fixed_by_env = {"EDGE_APP_WEB_MAX_FPS": "5"}
    one_error(edge_app("config", "check", config, env=fixed_by_env), 2, "web.max_fps")
    both = {"EDGE_APP_WEB_MAX_FPS": "5", "EDGE_APP_WEB_PORT": "eighty"}
    line = one_error(edge_app("config", "check", config, env=both), 2, "web.max_fps")
    assert "web.port" in line and "EDGE_APP_" in line


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "is a folder"),
        (b"[web\nport = 1\n", "invalid TOML"),
        (b"\xff\xfe\x00garbage", "not UTF-8"),
        (b"[web]\nport = 99999\n", "web.port"),
        (b"[[web]]\nport = 1\n", "web must be a table"),
        (b"[trigger]\npattern = '('\n", "trigger[1].pattern"),
        ("fifo", "not a regular file"),
    ],
)
def test_broken_config_files_are_one_line(content, message, tmp_path):
    config = tmp_path / "config.toml"
    if content is None:
        config.mkdir()
    elif content == "fifo":
        os.mkfifo(config)
    else:
        config.write_bytes(content)
    for command in (("config", "check", config), ("config", "show", config)):
        one_error(edge_app(*command, timeout=30), 2, message)
    one_error(edge_app("serve", "--config", config, timeout=30), 2, message)


# -- the service never hangs on start or stop ----------------------------------------------
def test_sigterm_at_random_points_of_start_up_stops_the_service(tmp_path, demo_video, int8_model):
    config = service_config(tmp_path, demo_video, int8_model, eventlog={"path": "events.jsonl"})
    for delay in (RNG.uniform(0.5, 1.5), RNG.uniform(1.5, 4.0)):
        proc = subprocess.Popen(
            [sys.executable, "-m", "edge_app", "serve", "--config", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(delay)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=20)  # a hang fails here
        assert proc.returncode in (0, 143), stderr
        assert "Traceback" not in stderr, stderr


def test_a_web_server_that_never_started_closes_at_once():
    """The cause of the start-up hang: shutdown() waited for a serve_forever() that never ran."""
    from edge_app.service.config import ServiceConfig, WebConfig
    from edge_app.service.service import Service
    from edge_app.service.web import WebServer

    config = ServiceConfig(web=WebConfig(port=0))
    web = WebServer(config.web, Service(config))
    closer = threading.Thread(target=web.close, daemon=True)
    closer.start()
    closer.join(10)
    assert not closer.is_alive(), "WebServer.close() hung on a server that never started"


# -- misbehaving HTTP clients (the web server in this process, on loopback) --------------------
@contextlib.contextmanager
def web_server(**web):
    from edge_app.service.config import ServiceConfig, WebConfig
    from edge_app.service.service import Service
    from edge_app.service.web import WebServer

    config = ServiceConfig(web=WebConfig(port=0, **web))
    service = Service(config)
    server = WebServer(config.web, service)
    server.start()
    try:
        yield server
    finally:
        server.close()
        service.shutdown()


def http_get(port: int, path: str, host: str | None = None, timeout: float = 10.0) -> int:
    """The status of a raw HTTP/1.0 GET with the given Host header."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        head = f"GET {path} HTTP/1.0\r\n" + (f"Host: {host}\r\n" if host else "") + "\r\n"
        sock.sendall(head.encode())
        reply = b""
        while b"\r\n" not in reply:
            chunk = sock.recv(4096)
            if not chunk:
                break
            reply += chunk
    return int(reply.split(b" ", 2)[1])


def test_without_a_token_only_loopback_host_names_are_answered():
    with web_server() as web:
        port = web.port
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", "[::1]", "app.localhost", None):
            assert http_get(port, "/api/latest", host) == 503, host  # no result yet: 503
        for host in (
            "attacker.example",
            f"attacker.example:{port}",
            "192.168.1.10",
            "127.0.0.1.evil",
        ):
            assert http_get(port, "/api/latest", host) == 403, host
            assert http_get(port, "/snapshot.jpg", host) == 403, host
    with web_server(allowed_hosts="edge-pi.local, camera.lan") as web:
        assert http_get(web.port, "/api/latest", f"edge-pi.local:{web.port}") == 503
        assert http_get(web.port, "/api/latest", "camera.lan") == 503
        assert http_get(web.port, "/api/latest", "attacker.example") == 403


def test_with_a_token_any_host_needs_the_token_and_the_token_is_never_logged(caplog):
    secret = "s3cret-token-value"
    with caplog.at_level("DEBUG", logger="edge_app.service.web"), web_server(token=secret) as web:
        assert http_get(web.port, "/api/stats", "attacker.example") == 401
        assert http_get(web.port, f"/api/stats?token={secret}", "attacker.example") == 200
        assert http_get(web.port, f"/api/stats?a=1&token={secret}&b=2") == 200
    assert "/api/stats?token=***" in caplog.text
    assert secret not in caplog.text


def test_the_listen_backlog_holds_a_burst_while_no_thread_accepts():
    """The kernel completes connections up to the listen backlog by itself; beyond it
    connections hang in SYN retries (the old backlog of 5 lost a burst of /healthz)."""
    from edge_app.service.config import ServiceConfig, WebConfig
    from edge_app.service.service import Service
    from edge_app.service.web import WebServer

    config = ServiceConfig(web=WebConfig(port=0))
    web = WebServer(config.web, Service(config))  # bound and listening, not accepting
    clients = []
    try:
        for _ in range(100):
            sock = socket.socket()
            sock.setblocking(False)
            sock.connect_ex(("127.0.0.1", web.port))
            clients.append(sock)
        deadline = time.monotonic() + 10
        connected: set = set()
        while len(connected) < 100 and time.monotonic() < deadline:
            for index, sock in enumerate(clients):
                if (
                    index not in connected
                    and sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
                ):
                    try:
                        sock.getpeername()
                        connected.add(index)
                    except OSError:
                        pass
            time.sleep(0.05)
        assert len(connected) == 100, f"only {len(connected)} of 100 connections completed"
    finally:
        for sock in clients:
            sock.close()
        web.close()


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64,  # a TLS hello
        b"GET /" + b"a" * 70000 + b" HTTP/1.0\r\n\r\n",  # a request line too long
        b"GET / HTTP/1.0\r\n" + b"X-Many: 1\r\n" * 200 + b"\r\n",  # too many headers
        b"POST /api/latest HTTP/1.0\r\nContent-Length: 5\r\n\r\nhello",
        b"GET http://attacker.example/api/latest HTTP/1.0\r\nHost: attacker.example\r\n\r\n",
        b"GET /api/latest?token=%ff%fe HTTP/1.0\r\n\r\n",
        b"GET / HTTP/1.0\r\n",  # then gone without the blank line
    ],
)
def test_misbehaving_clients_get_an_answer_or_are_dropped_and_the_server_goes_on(
    request_bytes, capfd
):
    with web_server() as web:
        with socket.create_connection(("127.0.0.1", web.port), timeout=15) as sock:
            with contextlib.suppress(OSError):
                sock.sendall(request_bytes)
                sock.shutdown(socket.SHUT_WR)
                reply = sock.recv(4096)
                if reply and b"attacker" in request_bytes:
                    assert reply.split(b" ", 2)[1] == b"403", reply
        assert http_get(web.port, "/healthz") == 503  # still answering
    assert "Traceback" not in capfd.readouterr().err


def test_a_burst_of_200_clients_is_answered():
    with web_server() as web:
        results: list = []

        def one():
            try:
                results.append(http_get(web.port, "/healthz", timeout=30))
            except OSError as exc:
                results.append(exc)

        threads = [threading.Thread(target=one) for _ in range(200)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    assert Counter(results) == Counter({503: 200})  # answered: "starting", no result yet


def test_clients_that_trickle_bytes_are_dropped_and_threads_are_capped(monkeypatch):
    from edge_app.service import web as web_module

    monkeypatch.setattr(web_module, "REQUEST_HEAD_S", 1.0)
    with web_server(max_clients=4) as web:
        cap = 4 + web_module.SHORT_REQUEST_THREADS
        baseline = threading.active_count()
        tricklers = []
        for _ in range(cap + 20):
            sock = socket.create_connection(("127.0.0.1", web.port), timeout=10)
            sock.sendall(b"GET /healthz HTTP/1.0\r\n")
            tricklers.append(sock)
        most = 0
        deadline = time.monotonic() + 20
        open_socks = list(tricklers)
        while open_socks and time.monotonic() < deadline:
            most = max(most, threading.active_count() - baseline)
            for sock in list(open_socks):
                try:
                    sock.sendall(b"X-Slow: 1\r\n")  # a byte now and then, never the end
                except OSError:
                    open_socks.remove(sock)  # the server dropped it
            time.sleep(0.2)
        assert not open_socks, f"{len(open_socks)} trickling clients still held"
        assert most <= cap, most
        assert http_get(web.port, "/healthz") == 503  # and the server still answers
        for sock in tricklers:
            sock.close()


# -- a SIGHUP that changes the model fetches it off the main loop ----------------------------
class _SlowModelServer:
    """A model download on loopback that sends one byte a second: a slow network."""

    def __init__(self):
        self.asked = threading.Event()
        self.stop = threading.Event()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                owner.asked.set()
                self.send_response(200)
                self.send_header("Content-Length", "4000000")
                self.end_headers()
                while not owner.stop.wait(1.0):
                    try:
                        self.wfile.write(b"\0")
                        self.wfile.flush()
                    except OSError:
                        return

            def log_message(self, *args):
                pass

        self.httpd = HTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/slow.tflite"

    def close(self):
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def _slow_manifest(url: str) -> str:
    return (
        'default = "slow_model"\n\n[[models]]\nname = "slow_model"\nfile = "slow_model.tflite"\n'
        f'url = "{url}"\nsha256 = "{"0" * 64}"\nsize = 4000000\ninput_size = [224, 224]\n'
        'dtype = "int8"\nlabels = "embedded"\ndescription = "a download that takes hours"\n'
    )


def test_a_sighup_fetching_a_slow_model_keeps_the_watchdog_pinged(tmp_path, demo_video, int8_model):
    slow = _SlowModelServer()
    manifest = tmp_path / "manifest.toml"
    manifest.write_text(_slow_manifest(slow.url))
    (tmp_path / "models").mkdir()
    document = demo_config(demo_video, int8_model, tmp_path / "state", free_port())
    notify = NotifySocket()
    env = {
        "NOTIFY_SOCKET": notify.address,
        "WATCHDOG_USEC": "1000000",
        "EDGE_APP_MODEL_MANIFEST": str(manifest),
        "EDGE_APP_MODELS_DIR": str(tmp_path / "models"),
    }
    service = ServiceProcess(document, tmp_path, env=env)
    try:
        notify.wait_for("READY=1", timeout=120)
        document["model"]["model"] = "slow_model"
        service.config_path.write_text(to_toml(document))
        service.signal(signal.SIGHUP)
        assert slow.asked.wait(30), service.stderr()
        notify.drain()
        for _ in range(4):  # 0.5 s apart while the download crawls: the loop is not blocked
            notify.wait_for("WATCHDOG=1", timeout=5)
        status, body = service.get_json("/healthz")
        assert status == 200, body
        started = time.monotonic()
        assert service.stop(timeout=10) == 0, service.stderr()
        assert time.monotonic() - started < 10
        assert "Traceback" not in service.stderr()
    finally:
        service.stop()
        slow.close()
        notify.close()


def test_sigterm_during_a_slow_model_fetch_at_start_up_stops_the_service(
    tmp_path, demo_video, int8_model
):
    slow = _SlowModelServer()
    manifest = tmp_path / "manifest.toml"
    manifest.write_text(_slow_manifest(slow.url))
    (tmp_path / "models").mkdir()
    document = demo_config(demo_video, "slow_model", tmp_path / "state", free_port())
    env = {
        "EDGE_APP_MODEL_MANIFEST": str(manifest),
        "EDGE_APP_MODELS_DIR": str(tmp_path / "models"),
    }
    service = ServiceProcess(document, tmp_path, env=env)
    try:
        assert slow.asked.wait(60), service.stderr()
        time.sleep(0.5)
        started = time.monotonic()
        code = service.stop(timeout=10)
        assert time.monotonic() - started < 10, "serve ignored SIGTERM during its start-up"
        assert code == 143, service.stderr()
        assert "Traceback" not in service.stderr() and "terminated" in service.stderr()
    finally:
        service.stop()
        slow.close()
