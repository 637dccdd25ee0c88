"""The source, model and pipeline settings are defined once (edge_app.settings): the
service's TOML sections are those classes and the CLI's options are made from them, so
a default, bound or choice cannot differ between `run`, `classify` and `serve`."""

from __future__ import annotations

import dataclasses

import click
import pytest
from click.testing import CliRunner

from edge_app.cli import cli
from edge_app.cli.classify_cmd import classify
from edge_app.cli.eval_cmd import eval_command
from edge_app.cli.options import flag_name
from edge_app.cli.run_cmd import run
from edge_app.errors import ConfigError
from edge_app.service import config as service_config
from edge_app.settings import (
    CROP_CHOICES,
    DEFAULT_MODEL,
    LIVE_SECTIONS,
    RUNTIME_CHOICES,
    ModelSettings,
    PipelineSettings,
    SourceSettings,
    check_value,
    make_settings,
)

# `run` options that are about the run itself, not a setting the service shares.
RUN_ONLY = {
    "headless", "fullscreen", "json_lines", "max_frames", "duration", "snapshot_dir",
    "teach_dir", "teach_classes",
}  # fmt: skip


def options_of(command: click.Command) -> dict[str, click.Option]:
    return {p.name: p for p in command.params if isinstance(p, click.Option)}


def flagged(cls) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if f.metadata["flag"] is not None]


def test_the_service_schema_is_the_settings_classes():
    for name, cls in LIVE_SECTIONS.items():
        assert service_config.SECTIONS[name] is cls
    defaults = service_config.ServiceConfig()
    assert defaults.source == SourceSettings()
    assert defaults.model == ModelSettings()
    # The one default a service declares differently (smoothing on), in one named place.
    assert defaults.pipeline == PipelineSettings(**service_config.SERVICE_DEFAULTS["pipeline"])
    assert service_config.SERVICE_DEFAULTS == {"pipeline": {"smooth": 0.6}}


@pytest.mark.parametrize(
    "command, groups",
    [
        (run, (SourceSettings, ModelSettings, PipelineSettings)),
        (classify, (ModelSettings,)),
        (eval_command, (ModelSettings,)),
    ],
)
def test_every_flag_matches_its_setting(command, groups):
    options = options_of(command)
    for cls in groups:
        for f in flagged(cls):
            option = options.get(f.name)
            assert option is not None, f"{command.name}: no option for {cls.__name__}.{f.name}"
            assert option.default == f.default, f"{command.name} --{f.name}"
            assert flag_name(f) in option.opts, (f.name, option.opts)
            if f.metadata["choices"]:
                assert tuple(option.type.choices) == f.metadata["choices"]
            if f.metadata["kind"] == "bool":
                assert option.is_flag


def test_run_has_no_option_the_settings_do_not_know():
    known = {f.name for cls in LIVE_SECTIONS.values() for f in flagged(cls)}
    options = set(options_of(run))
    assert options - known - RUN_ONLY == {"size"}  # width and height in one flag
    size = options_of(run)["size"]
    assert size.default == f"{SourceSettings().width}x{SourceSettings().height}"


def test_one_default_model_and_one_set_of_choices():
    from edge_app.inference import model_store, preprocess, runtime
    from edge_app.inference.classifier import DEFAULT_MODEL as classifier_default

    assert ModelSettings().model == DEFAULT_MODEL == classifier_default
    assert model_store.DEFAULT_MODEL_NAME == DEFAULT_MODEL
    assert preprocess.CROP_CHOICES is CROP_CHOICES
    assert runtime.RUNTIME_CHOICES is RUNTIME_CHOICES


def test_defaults_pass_their_own_checks():
    for section, cls in LIVE_SECTIONS.items():
        values = {f.name: f.default for f in dataclasses.fields(cls)}
        assert make_settings(cls, section, values) == cls()


def test_hysteresis_follows_smoothing_unless_set():
    assert PipelineSettings().effective_hysteresis == 0.0
    assert PipelineSettings(smooth=0.7).effective_hysteresis == 0.1
    assert PipelineSettings(smooth=0.7, hysteresis=0.0).effective_hysteresis == 0.0


def test_a_message_names_the_setting_and_where_the_value_came_from(tmp_path, demo_video):
    meta = dataclasses.fields(ModelSettings)[3].metadata  # threads
    with pytest.raises(ConfigError) as caught:
        check_value("model.threads", 99, meta, "--threads")
    assert caught.value.message == "model.threads must be from 0 to 64, got 99 (from --threads)"

    result = CliRunner().invoke(cli, ["run", "--source", str(demo_video), "--threads", "99"])
    assert result.exit_code == 2
    assert "model.threads must be from 0 to 64, got 99 (from --threads)" in result.output

    path = tmp_path / "edge-app.toml"
    path.write_text("[model]\nthreads = 99\n")
    with pytest.raises(ConfigError) as caught:
        service_config.load_config(path, {})
    assert caught.value.message == f"{path}: model.threads must be from 0 to 64, got 99"
    with pytest.raises(ConfigError) as caught:
        service_config.load_config(None, {"EDGE_APP_MODEL_THREADS": "99"})
    assert caught.value.message == (
        "environment variable EDGE_APP_MODEL_THREADS=99: model.threads must be from 0 to 64, got 99"
    )


def test_the_same_bound_holds_for_a_flag_and_a_config_key(demo_video):
    for flag, key, value in (
        ("--smooth", "pipeline.smooth", "1.5"),
        ("--fps", "source.fps", "500"),
        ("--top-k", "model.top_k", "0"),
        ("--buffer-count", "source.buffer_count", "17"),
    ):
        result = CliRunner().invoke(cli, ["run", "--source", str(demo_video), flag, value])
        assert result.exit_code == 2, (flag, result.output)
        assert f"{key} must be from" in result.output and f"(from {flag})" in result.output
        section, name = key.split(".")
        variable = f"EDGE_APP_{section.upper()}_{name.upper()}"
        with pytest.raises(ConfigError, match=f"{key} must be from"):
            service_config.load_config(None, {variable: value})


def test_odd_sizes_are_refused_by_flag_and_by_config(demo_video):
    result = CliRunner().invoke(cli, ["run", "--source", str(demo_video), "--size", "641x480"])
    assert result.exit_code == 2 and "must be even" in result.output
    assert "(from --size)" in result.output
    with pytest.raises(ConfigError, match="must be even"):
        service_config.load_config(None, {"EDGE_APP_SOURCE_WIDTH": "641"})


def test_config_check_explain_lists_every_key_with_its_help(tmp_path):
    lines = service_config.explain()
    for section, cls in LIVE_SECTIONS.items():
        for f in dataclasses.fields(cls):
            entry = next(line for line in lines if line.strip().startswith(f"{section}.{f.name} "))
            assert f.metadata["doc"] in entry
    assert any(line.strip().startswith("web.port = 8080") for line in lines)
    path = tmp_path / "edge-app.toml"
    path.write_text("")
    result = CliRunner().invoke(cli, ["config", "check", str(path), "--explain"])
    assert result.exit_code == 0
    assert "model.threads = 0  (0 to 64): interpreter threads; 0: all cores" in result.output
