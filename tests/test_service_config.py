"""The service configuration: TOML schema, one-line errors naming file and key,
EDGE_APP_* overrides, and `edge-app config check`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from service_support import ROOT, to_toml

from edge_app.errors import ConfigError
from edge_app.service.config import ServiceConfig, load_config

EXAMPLE = ROOT / "config" / "edge-app.example.toml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def error_of(path, environ=None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, environ or {})
    message = info.value.message
    assert "\n" not in message
    return message


def test_the_example_config_is_valid_and_its_values_are_the_defaults():
    config = load_config(EXAMPLE, {})
    defaults = ServiceConfig()
    for section in ("source", "model", "pipeline", "web", "mqtt", "eventlog", "service"):
        assert getattr(config, section) == getattr(defaults, section), section
    assert config.trigger == ()


def test_every_key_of_the_schema_is_documented_in_the_example():
    from dataclasses import fields

    text = EXAMPLE.read_text()
    config = ServiceConfig()
    for section in ("source", "model", "pipeline", "web", "mqtt", "eventlog", "service"):
        for f in fields(getattr(config, section)):
            if f.name == "tls":
                assert "\n[mqtt.tls]\n" in text
                continue
            assert f"\n{f.name} = " in text or f"\n# {f.name} = " in text, f"{section}.{f.name}"
    for key in ("pattern", "min_score", "cooldown_s", "dir", "max_mb", "name"):
        assert f"# {key} = " in text, f"trigger.{key}"


def test_a_full_config_is_read_into_typed_sections(tmp_path):
    path = write(
        tmp_path,
        to_toml(
            {
                "source": {"spec": "0", "width": 1280, "height": 720, "fps": 15},
                "model": {"top_k": 3, "threshold": 0.1, "crop": "square"},
                "pipeline": {"smooth": 0.7},
                "web": {"host": "0.0.0.0", "token": "s3cret-token", "max_fps": 5},
                "mqtt": {"enabled": True, "host": "broker", "qos": 1, "tls": {"enabled": True}},
                "eventlog": {"path": "events.jsonl", "mode": "all"},
                "trigger": [{"pattern": "chickadee|jay", "min_score": 0.4}],
                "service": {"state_dir": str(tmp_path)},
            }
        ),
    )
    config = load_config(path, {})
    assert (config.source.width, config.source.height, config.source.fps) == (1280, 720, 15.0)
    assert isinstance(config.source.fps, float)
    assert config.model.crop == "square" and config.model.top_k == 3
    assert config.pipeline.effective_hysteresis == 0.1  # the `run --smooth` default
    assert config.web.host == "0.0.0.0" and config.web.token == "s3cret-token"
    assert config.mqtt.qos == 1 and config.mqtt.tls.enabled
    assert config.in_state_dir(config.eventlog.path) == tmp_path / "events.jsonl"
    assert config.trigger[0].pattern == "chickadee|jay"
    assert config.trigger_name(0) == "trigger1"


def test_an_unknown_key_is_named_with_the_file_and_a_suggestion(tmp_path):
    path = write(tmp_path, "[web]\nprot = 8081\n")
    assert error_of(path) == f"{path}: unknown key 'web.prot' (did you mean 'port'?)"


def test_an_unknown_section_is_named(tmp_path):
    path = write(tmp_path, "[wbe]\nport = 1\n")
    assert error_of(path) == f"{path}: unknown section 'wbe' (did you mean 'web'?)"


def test_an_unknown_key_in_a_sub_table_and_a_trigger(tmp_path):
    path = write(tmp_path, "[mqtt.tls]\ncafile = 'x'\n")
    assert "unknown key 'mqtt.tls.cafile'" in error_of(path)
    path = write(tmp_path, "[[trigger]]\npattern = 'x'\n[[trigger]]\npatern = 'y'\n")
    assert "unknown key 'trigger[2].patern' (did you mean 'pattern'?)" in error_of(path)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("[web]\nport = 80800\n", "web.port must be from 0 to 65535, got 80800"),
        ("[web]\nport = '8080'\n", "web.port must be an integer, got a string '8080'"),
        ("[web]\nenabled = 'yes'\n", "web.enabled must be true or false, got 'yes'"),
        ("[source]\nfps = true\n", "source.fps must be a number, got a boolean True"),
        ("[model]\ncrop = 'middle'\n", "model.crop must be one of 'central', 'square', 'none'"),
        ("[eventlog]\nmode = 'some'\n", "eventlog.mode must be one of 'all', 'changes'"),
        ("[mqtt]\nqos = 3\n", "mqtt.qos must be from 0 to 2, got 3"),
        ("web = 3\n", "web must be a table ([web]), got an integer"),
        ("[[trigger]]\nmin_score = 0.5\n", "trigger[1].pattern is required"),
        ("[[trigger]]\npattern = 'bird('\n", "trigger[1].pattern 'bird(': missing )"),
        ("[mqtt]\nprefix = 'home/#'\n", "mqtt.prefix 'home/#' must not contain + or #"),
        ("[mqtt.tls]\ncert = 'a.pem'\n", "mqtt.tls.cert and mqtt.tls.key must be set together"),
        ("[model]\nmodel = 'missing/model.tflite'\n", "model.model: no such file"),
    ],
)
def test_bad_values_name_the_file_and_the_key(tmp_path, text, expected):
    path = write(tmp_path, text)
    message = error_of(path)
    assert message.startswith(f"{path}: "), message
    assert expected in message


def test_listening_beyond_loopback_needs_a_token(tmp_path):
    for host in ("0.0.0.0", "::", "192.0.2.7", "camera.local"):
        path = write(tmp_path, f"[web]\nhost = '{host}'\n")
        assert "listens beyond loopback: set web.token" in error_of(path)
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.2"):
        path = write(tmp_path, f"[web]\nhost = '{host}'\n")
        assert load_config(path, {}).web.host == host
    path = write(tmp_path, "[web]\nhost = '0.0.0.0'\nenabled = false\n")
    assert not load_config(path, {}).web.enabled


def test_invalid_toml_names_the_line(tmp_path):
    path = write(tmp_path, "[web]\nport = \n")
    message = error_of(path)
    assert message.startswith(f"{path}: invalid TOML: ") and "line 2" in message


def test_a_missing_file_is_one_line(tmp_path):
    assert error_of(tmp_path / "nope.toml") == f"{tmp_path / 'nope.toml'}: no such config file"


def test_environment_variables_override_the_file(tmp_path):
    path = write(tmp_path, "[web]\nport = 8080\nmax_fps = 10\n[mqtt]\nenabled = false\n")
    environ = {
        "EDGE_APP_WEB_PORT": "9090",
        "EDGE_APP_WEB_MAX_FPS": "2.5",
        "EDGE_APP_MQTT_ENABLED": "yes",
        "EDGE_APP_MQTT_TLS_INSECURE": "true",
        "EDGE_APP_SHARED": "/elsewhere",  # another part of the app's variable: ignored
        "EDGE_APP_MODEL_MIRROR": "/mirror",
    }
    config = load_config(path, environ)
    assert config.web.port == 9090 and config.web.max_fps == 2.5
    assert config.mqtt.enabled and config.mqtt.tls.insecure


def test_bad_environment_overrides_are_named(tmp_path):
    path = write(tmp_path, "")
    message = error_of(path, {"EDGE_APP_WEB_PROT": "1"})
    assert "environment variable EDGE_APP_WEB_PROT: unknown key 'prot' in [web]" in message
    assert "web.port must be an integer, got a string 'eighty'" in error_of(
        path, {"EDGE_APP_WEB_PORT": "eighty"}
    )


def test_relative_files_are_found_beside_the_config(tmp_path, int8_model):
    (tmp_path / "model.tflite").write_bytes(int8_model.read_bytes())
    path = write(tmp_path, "[model]\nmodel = 'model.tflite'\n")
    assert load_config(path, {}).model.model == str(tmp_path / "model.tflite")


def _cli(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "edge_app", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def test_config_check_accepts_the_example_and_summarises_it():
    done = _cli("config", "check", str(EXAMPLE))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"{EXAMPLE}: OK\n")
    assert "web: http://127.0.0.1:8080/" in done.stdout


def test_config_check_refuses_a_bad_file_in_one_line(tmp_path):
    path = write(tmp_path, "[web]\nprot = 8081\n")
    done = _cli("config", "check", str(path))
    assert done.returncode == 2
    assert done.stderr == (
        f"edge-app: error: {path}: unknown key 'web.prot' (did you mean 'port'?)\n"
    )
    assert "Traceback" not in done.stderr


def test_config_show_masks_secrets(tmp_path):
    path = write(tmp_path, "[web]\ntoken = 'a-long-secret'\n[mqtt]\nusername='u'\npassword='pw'\n")
    done = _cli("config", "show", str(path))
    assert done.returncode == 0, done.stderr
    assert "a-long-secret" not in done.stdout and '"pw"' not in done.stdout
    assert '"token": "***"' in done.stdout


def test_serve_refuses_a_public_bind_without_a_token(tmp_path):
    path = write(tmp_path, "[web]\nhost = '0.0.0.0'\n")
    done = _cli("serve", "--config", str(path))
    assert done.returncode == 2
    assert done.stderr.startswith(f"edge-app: error: {path}: web.host '0.0.0.0' listens beyond")
    assert done.stderr.count("\n") == 1
