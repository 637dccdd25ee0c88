"""`edge-app models list|info|fetch` and the model store, on the real shared models.

No test reaches the internet: fetches come from the shared folder as a mirror, or from a
small HTTP server on 127.0.0.1, and "offline" is a refused connection on loopback.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import socket
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

from edge_app.cli import cli
from edge_app.errors import FetchError, ModelError
from edge_app.inference import model_store

INT8 = "mobilenet_v1_1.0_224_int8"
HOW_TO = (
    "put the file in a folder and set EDGE_APP_MODEL_MIRROR=/that/folder (or pass --model PATH)"
)


def run(*args: str):
    return CliRunner().invoke(cli, list(args))


def errors(result) -> list[str]:
    """The error lines of a run (stderr also has a line per download or derivation step)."""
    return [x for x in result.stderr.splitlines() if x.startswith("edge-app: error:")]


def sha256sums(shared_models: Path) -> dict[str, str]:
    sums = {}
    for line in (shared_models / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split()
        sums[name] = digest
    return sums


@pytest.fixture
def store(tmp_path, monkeypatch, shared_models) -> Path:
    """An empty models folder, with the shared models as the mirror."""
    folder = tmp_path / "models"
    monkeypatch.setenv("EDGE_APP_MODELS_DIR", str(folder))
    monkeypatch.setenv("EDGE_APP_MODEL_MIRROR", str(shared_models))
    monkeypatch.delenv("EDGE_APP_MODEL_MANIFEST", raising=False)
    return folder


@pytest.fixture
def offline_store(store, monkeypatch) -> Path:
    monkeypatch.delenv("EDGE_APP_MODEL_MIRROR")
    return store


@pytest.fixture(scope="module")
def int8_info(int8_model) -> dict:
    result = run("models", "info", str(int8_model), "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


# --------------------------------------------------------------------------- info


def test_info_reports_mobilenet_cost(int8_info):
    totals = int8_info["totals"]
    assert abs(totals["params"] / 1e6 - 4.2) < 0.05
    assert abs(totals["macs"] / 1e6 - 569) < 1
    assert totals["separable_blocks"] == 13
    layers = int8_info["layers"]
    assert len(layers) == 34
    assert sum(layer["params"] for layer in layers) == totals["params"]
    assert sum(layer["macs"] for layer in layers) == totals["macs"]
    first = layers[0]
    assert (first["op"], first["output_shape"], first["activation"]) == (
        "CONV_2D",
        [1, 112, 112, 32],
        "RELU6",
    )
    assert first["params"] == 3 * 3 * 3 * 32 + 32
    assert first["macs"] == 112 * 112 * 32 * 3 * 3 * 3
    assert [layer["op"] for layer in layers].count("DEPTHWISE_CONV_2D") == 13


def test_info_reports_io_labels_and_normalization(int8_info):
    [inp] = int8_info["inputs"]
    assert (inp["dtype"], inp["shape"]) == ("int8", [1, 224, 224, 3])
    assert inp["quantization"] == {"scale": 1 / 128, "zero_point": 0}
    [out] = int8_info["outputs"]
    assert (out["dtype"], out["shape"]) == ("int8", [1, 1001])
    assert out["quantization"] == {"scale": 1 / 256, "zero_point": -128}
    assert out["metadata_name"] == "probability"
    assert int8_info["normalization"] == {"mean": [127.5], "std": [127.5]}
    labels = int8_info["labels"]
    assert (labels["count"], labels["first"]) == (1001, "background")
    assert "embedded" in labels["source"]
    assert int8_info["metadata"]["name"] == "ImageClassifier"
    assert int8_info["runtime"]["name"] in ("litert", "tflite_runtime", "tensorflow")


def test_info_reports_xnnpack_coverage(int8_info):
    coverage = int8_info["xnnpack"]
    assert coverage["partitions"] == 2
    assert (coverage["delegated_nodes"], coverage["total_nodes"]) == (28, 34)
    assert coverage["cpu_ops"] == [
        "AVERAGE_POOL_2D",
        "SHAPE",
        "STRIDED_SLICE",
        "PACK",
        "RESHAPE",
        "SOFTMAX",
    ]
    assert coverage["delegated_mac_share"] == 1.0  # every conv runs in XNNPACK


def test_info_text_summarises(int8_model):
    result = run("models", "info", str(int8_model))
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert "4.22 M params, 568.7 M MACs, 13 depthwise-separable blocks" in text
    assert "28 of 34 nodes in 2 partition(s)" in text
    assert "int8 [1, 224, 224, 3], scale 0.0078125, zero point 0" in text
    assert "1001 from embedded: imagenet_labels.txt (index 0: 'background')" in text
    assert "(pixel - 127.5) / 127.5" in text


def test_info_on_the_smallest_width_variant(shared_models):
    result = run(
        "models", "info", str(shared_models / "mobilenet_v1_0.25_128_quant.tflite"), "--json"
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    # Published figures for MobileNet V1 0.25/128: 0.47 M parameters, 14 M MACs.
    assert abs(data["totals"]["params"] / 1e6 - 0.47) < 0.01
    assert abs(data["totals"]["macs"] / 1e6 - 14) < 0.5
    assert data["totals"]["separable_blocks"] == 13
    assert data["inputs"][0]["quantization"] == {"scale": 1 / 128, "zero_point": 128}
    assert data["xnnpack"]["cpu_ops"] == ["AVERAGE_POOL_2D", "SOFTMAX"]


def test_info_by_name_needs_the_file_fetched_first(store):
    result = run("models", "info", INT8)
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        f"edge-app: error: model {INT8} is not in {store}; run: edge-app models fetch {INT8}"
    )
    assert run("models", "fetch").exit_code == 0
    result = run("models", "info", INT8, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["model"]["path"] == str(store / f"{INT8}.tflite")


def test_unknown_model_name(store):
    result = run("models", "info", "mobilenet_v9")
    assert result.exit_code == 2
    [line] = result.stderr.splitlines()
    assert line.startswith("edge-app: error: unknown model 'mobilenet_v9'; known models: ")
    assert INT8 in line and "mobilenet_v1_0.25_128_quant" in line


def test_missing_model_path(store, tmp_path):
    missing = tmp_path / "nowhere" / "model.tflite"
    result = run("models", "info", str(missing))
    assert result.exit_code == 2
    assert result.stderr.strip() == f"edge-app: error: model file not found: {missing}"


def test_garbage_model_file_is_one_line(tmp_path):
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"\x00" * 4 + b"TFL3" + b"\xff" * 200)
    result = run("models", "info", str(bad))
    assert result.exit_code == 2
    [line] = result.stderr.splitlines()
    assert line.startswith("edge-app: error: ")
    assert str(bad) in line


# --------------------------------------------------------------------------- list


def test_list_shows_every_model_and_where_it_comes_from(store):
    result = run("models", "list")
    assert result.exit_code == 0, result.output
    rows = {
        line.split()[1] if line.startswith("*") else line.split()[0]: line
        for line in result.stdout.splitlines()[1:11]
    }
    assert set(rows) == {
        "mobilenet_v1_1.0_224_int8",
        "mobilenet_v1_1.0_224_int8_tf",
        "mobilenet_v1_1.0_224_quant",
        "mobilenet_v1_1.0_224_float",
        "mobilenet_v1_0.75_192_quant",
        "mobilenet_v1_0.5_160_quant",
        "mobilenet_v1_0.25_128_quant",
        "mobilenet_v1_0.75_192_int8",
        "mobilenet_v1_0.5_160_int8",
        "mobilenet_v1_0.25_128_int8",
    }
    assert rows[INT8].startswith("* ")
    assert rows[INT8].rstrip().endswith("derived int8 from mobilenet_v1_1.0_224_quant")
    assert rows[f"{INT8}_tf"].rstrip().endswith("mirror only")
    assert (
        rows["mobilenet_v1_1.0_224_quant"]
        .rstrip()
        .endswith(
            "https://storage.googleapis.com/download.tensorflow.org/models/"
            "mobilenet_v1_2018_08_02/mobilenet_v1_1.0_224_quant.tgz "
            "(mobilenet_v1_1.0_224_quant.tflite)"
        )
    )
    assert "4.6 MB" in rows[INT8] and "224x224" in rows[INT8] and " no " in rows[INT8]
    assert (
        "https://github.com/google-coral/test_data/raw/master/mobilenet_v1_0.5_160_quant.tflite"
        in rows["mobilenet_v1_0.5_160_quant"]
    )
    assert f"models folder: {store}" in result.stdout


def test_list_json_tracks_presence(store):
    before = {row["name"]: row for row in json.loads(run("models", "list", "--json").stdout)}
    assert not any(row["present"] for row in before.values())
    assert before[INT8]["default"] is True
    run("models", "fetch")
    after = {row["name"]: row for row in json.loads(run("models", "list", "--json").stdout)}
    assert after[INT8]["present"] is True
    assert not after["mobilenet_v1_1.0_224_float"]["present"]


# --------------------------------------------------------------------------- fetch


def test_fetch_default_from_mirror_derives_it(store, shared_models):
    """The shared folder holds the TensorFlow-made int8 under the default's file name:
    that is another model (mobilenet_v1_1.0_224_int8_tf), so the default is derived from
    the mirror's uint8 model instead, to the bytes the manifest pins."""
    result = run("models", "fetch")
    assert result.exit_code == 0, result.output
    dest = store / f"{INT8}.tflite"
    assert result.stdout.strip() == f"{INT8}: fetched: {dest}"
    assert f"deriving {INT8} from mobilenet_v1_1.0_224_quant" in result.stderr
    digest = hashlib.sha256(dest.read_bytes()).hexdigest()
    assert digest == model_store.load_manifest()[INT8].sha256
    assert digest != sha256sums(shared_models)[dest.name]
    again = run("models", "fetch", INT8)
    assert again.stdout.strip() == f"{INT8}: already present: {dest}"
    # the uint8 source stays beside it; no temp files or sidecars left
    assert sorted(p.name for p in store.iterdir()) == [
        dest.name,
        "mobilenet_v1_1.0_224_quant.tflite",
    ]


def test_fetch_tf_made_int8_from_mirror_under_its_own_name(store, shared_models):
    result = run("models", "fetch", f"{INT8}_tf")
    assert result.exit_code == 0, result.output
    dest = store / f"{INT8}_tf.tflite"
    assert model_store.sha256_of(dest) == sha256sums(shared_models)[f"{INT8}.tflite"]


def test_fetch_all_from_mirror(store, shared_models):
    result = run("models", "fetch", "--all")
    assert result.exit_code == 0, result.output
    manifest = model_store.load_manifest()
    assert sorted(p.name for p in store.iterdir()) == sorted(e.file for e in manifest.values())
    for entry in manifest.values():
        assert model_store.sha256_of(store / entry.file) == entry.sha256, entry.name


def test_fetch_force_replaces_a_damaged_copy(store):
    run("models", "fetch")
    dest = store / f"{INT8}.tflite"
    dest.write_bytes(b"damaged")
    result = run("models", "fetch", INT8)  # a wrong checksum is never "already present"
    assert result.exit_code == 0
    assert "fetched" in result.stdout
    assert model_store.sha256_of(dest) == model_store.load_manifest()[INT8].sha256


def test_corrupted_mirror_file_is_refused(store, tmp_path, monkeypatch, shared_models):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    good = (shared_models / f"{INT8}.tflite").read_bytes()
    (mirror / f"{INT8}.tflite").write_bytes(good[:-1000] + b"\0" * 1000)
    monkeypatch.setenv("EDGE_APP_MODEL_MIRROR", str(mirror))
    result = run("models", "fetch")
    assert result.exit_code == 2
    [line] = result.stderr.splitlines()
    assert line.startswith(f"edge-app: error: checksum mismatch for {INT8} from {mirror}")
    assert line.endswith("the file was not kept")
    assert not store.exists() or list(store.iterdir()) == []


def test_offline_without_mirror_explains_what_to_do(offline_store, monkeypatch):
    port = _closed_port()
    monkeypatch.setenv("EDGE_APP_MODEL_BASE_URL", f"http://127.0.0.1:{port}")
    result = run("models", "fetch")
    assert result.exit_code == 2
    archive = (
        f"http://127.0.0.1:{port}/download.tensorflow.org/models/mobilenet_v1_2018_08_02/"
        "mobilenet_v1_1.0_224_quant.tgz"
    )
    [line] = [x for x in result.stderr.splitlines() if x.startswith("edge-app: error:")]
    assert line.startswith(
        f"edge-app: error: cannot get {INT8} (derived from mobilenet_v1_1.0_224_quant): "
        f"tried mirror folder (EDGE_APP_MODEL_MIRROR not set); {archive} ("
    )
    assert line.endswith(HOW_TO)
    assert list(offline_store.iterdir()) == []
    with pytest.raises(FetchError):
        model_store.fetch(INT8)


def test_make_run_offline_says_what_it_tried_and_exits_2(tmp_path):
    """`make run` on a fresh device with no network and no mirror: one error line."""
    import os
    import subprocess

    root = Path(__file__).resolve().parent.parent
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_APP_")}
    env.update(
        EDGE_APP_MODELS_DIR=str(tmp_path / "models"),
        EDGE_APP_MODEL_BASE_URL=f"http://127.0.0.1:{_closed_port()}",
        SHARED=str(tmp_path / "no-shared"),
    )
    done = subprocess.run(
        ["make", "-s", "run", "SOURCE=file"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2, done.stderr
    errors = [x for x in done.stderr.splitlines() if x.startswith("edge-app: error:")]
    assert len(errors) == 1, done.stderr
    assert "tried mirror folder (EDGE_APP_MODEL_MIRROR not set)" in errors[0]
    assert errors[0].endswith(HOW_TO)


def test_fetch_all_reports_each_failure_and_exits_2(offline_store, monkeypatch):
    monkeypatch.setenv("EDGE_APP_MODEL_BASE_URL", f"http://127.0.0.1:{_closed_port()}")
    result = run("models", "fetch", "--all")
    assert result.exit_code == 2
    lines = [x for x in result.stderr.splitlines() if x.startswith("edge-app: error: ")]
    assert len(lines) == len(model_store.load_manifest())  # every entry, one line each
    assert all(line.endswith(HOW_TO) for line in lines)


def test_fetch_names_and_all_conflict(store):
    result = run("models", "fetch", INT8, "--all")
    assert result.exit_code == 2
    assert "not both" in result.stderr


# --------------------------------------------------------------------------- downloads


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again when the socket is: connections refused


def _local_manifest(tmp_path: Path, port: int) -> Path:
    """The real manifest with every entry downloadable from 127.0.0.1:port."""
    text = model_store.manifest_path().read_text()
    lines = []
    for line in text.splitlines():
        if line.startswith("file = "):
            file_name = line.split('"')[1]
        if line.startswith("url = "):
            line = f'url = "http://127.0.0.1:{port}/{file_name}"'
        lines.append(line)
    path = tmp_path / "manifest.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def http_folder(tmp_path):
    """A real HTTP server on loopback serving a folder; yields (folder, port)."""
    folder = tmp_path / "served"
    folder.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield folder, server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_download_over_http_is_verified(
    offline_store, http_folder, monkeypatch, tmp_path, shared_models
):
    folder, port = http_folder
    name = "mobilenet_v1_0.25_128_quant"
    (folder / f"{name}.tflite").write_bytes((shared_models / f"{name}.tflite").read_bytes())
    monkeypatch.setenv("EDGE_APP_MODEL_MANIFEST", str(_local_manifest(tmp_path, port)))
    result = run("models", "fetch", name)
    assert result.exit_code == 0, result.output
    dest = offline_store / f"{name}.tflite"
    assert result.stdout.strip() == f"{name}: fetched: {dest}"
    assert model_store.sha256_of(dest) == sha256sums(shared_models)[dest.name]


def test_download_with_wrong_contents_is_not_kept(
    offline_store, http_folder, monkeypatch, tmp_path, shared_models
):
    folder, port = http_folder
    name = "mobilenet_v1_0.5_160_quant"
    # The server has another model under this name.
    (folder / f"{name}.tflite").write_bytes(
        (shared_models / "mobilenet_v1_0.25_128_quant.tflite").read_bytes()
    )
    monkeypatch.setenv("EDGE_APP_MODEL_MANIFEST", str(_local_manifest(tmp_path, port)))
    result = run("models", "fetch", name)
    assert result.exit_code == 2
    [line] = errors(result)
    assert f"checksum mismatch for {name} from http://127.0.0.1:{port}/" in line
    assert list(offline_store.iterdir()) == []


def test_unreachable_download_explains_what_to_do(offline_store, monkeypatch, tmp_path):
    monkeypatch.setenv("EDGE_APP_MODEL_MANIFEST", str(_local_manifest(tmp_path, _closed_port())))
    result = run("models", "fetch", "mobilenet_v1_0.25_128_quant")
    assert result.exit_code == 2
    [line] = errors(result)
    assert line.startswith("edge-app: error: cannot download mobilenet_v1_0.25_128_quant from ")
    assert line.endswith(HOW_TO)


# --------------------------------------------------------------------------- store API


def test_manifest_matches_the_shared_models(shared_models):
    manifest = model_store.load_manifest()
    sums = sha256sums(shared_models)
    held = {e.mirror_file or e.file: e for e in manifest.values() if not e.derive}
    assert set(held) == set(sums)
    for file_name, entry in held.items():
        assert entry.sha256 == sums[file_name]
        assert entry.size == (shared_models / file_name).stat().st_size
    derived = [e for e in manifest.values() if e.derive]
    assert sorted(e.name for e in derived) == [
        "mobilenet_v1_0.25_128_int8",
        "mobilenet_v1_0.5_160_int8",
        "mobilenet_v1_0.75_192_int8",
        INT8,
    ]
    for entry in derived:
        assert manifest[entry.source].dtype == "uint8"
        assert entry.sha256 not in sums.values()
    assert model_store.DEFAULT_MODEL_NAME == INT8
    import tomllib

    assert tomllib.loads(model_store.manifest_path().read_text())["default"] == INT8


def test_resolve_model(store, int8_model):
    assert model_store.resolve_model(str(int8_model)) == int8_model  # a path, as is
    with pytest.raises(ModelError, match="models fetch"):
        model_store.resolve_model(INT8, fetch=False)
    path = model_store.resolve_model(INT8)  # fetched from the mirror
    assert path == store / f"{INT8}.tflite" and path.is_file()
    assert model_store.resolve_model(f"{INT8}.tflite") == path  # the file name works too


def test_models_dir_defaults_to_the_checkout(monkeypatch):
    monkeypatch.delenv("EDGE_APP_MODELS_DIR", raising=False)
    checkout_models = Path(__file__).resolve().parent.parent / "models"
    assert model_store.models_dir() == checkout_models
    monkeypatch.setenv("EDGE_APP_MODELS_DIR", "/somewhere/else")
    assert model_store.models_dir() == Path("/somewhere/else")


def test_coverage_without_xnnpack_is_zero(int8_model):
    from edge_app.inference.model_report import xnnpack_coverage
    from edge_app.inference.runtime import select_runtime

    plain = select_runtime("auto").make_interpreter(int8_model, num_threads=1, xnnpack=False)
    coverage = xnnpack_coverage(plain)
    assert (coverage.delegated_nodes, coverage.total_nodes, coverage.partitions) == (0, 34, 0)
    assert coverage.cpu_ops[:3] == ["CONV_2D", "DEPTHWISE_CONV_2D", "AVERAGE_POOL_2D"]
    assert coverage.delegated_mac_share == 0.0


def test_info_on_a_model_that_is_not_a_classifier(tmp_path):
    from tiny_models import add_model

    path = tmp_path / "add.tflite"
    path.write_bytes(add_model([1, 4]))
    result = run("models", "info", str(path), "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["metadata"] is None and data["normalization"] is None
    assert data["labels"]["count"] == 0 and "no labels" in data["labels"]["error"]
    assert [layer["op"] for layer in data["layers"]] == ["ADD"]
    assert data["totals"] == {"params": 0, "macs": 0, "separable_blocks": 0}
