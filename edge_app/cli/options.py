"""Click options made from the settings (``edge_app.settings``), and flags -> settings.

Click only parses text into the setting's kind; bounds, choices and the checks that
involve more than one value are the settings' own (``make_settings``), so a value is
checked once and its message names the flag it came from.
"""

from __future__ import annotations

from dataclasses import fields

import click

from edge_app.settings import (
    SMOOTH_FLAG_VALUE,
    ModelSettings,
    PipelineSettings,
    SourceSettings,
    make_settings,
)

_CLICK_TYPES = {"int": click.INT, "float": click.FLOAT, "str": click.STRING}


def flag_name(f) -> str:
    """The long flag of a settings field: the declared one, else ``--top-k`` for ``top_k``."""
    longs = [d for d in f.metadata["flag"] or () if d.startswith("--")]
    return longs[0] if longs else "--" + f.name.replace("_", "-")


def flag_decls(f) -> list[str]:
    """The click declarations of a settings field (its parameter name is the field's)."""
    shorts = [d for d in f.metadata["flag"] or () if not d.startswith("--")]
    long = flag_name(f)
    if f.metadata["kind"] == "bool" and f.default:
        long = f"{long}/--no-{long[2:]}"
    return [*shorts, long, f.name]


def setting_option(f, **overrides):
    """One click option for a settings field: default, choices and help from it."""
    meta = f.metadata
    help_text = meta["doc"]
    if meta["lo"] is not None and meta["hi"] is not None:
        help_text += f"; {meta['lo']} to {meta['hi']}"
    help_text = help_text + "." if help_text else None
    kwargs: dict = {"default": f.default, "show_default": f.default != "", "help": help_text}
    if meta["kind"] == "bool":
        kwargs["is_flag"] = True
        kwargs["show_default"] = bool(f.default)
    elif meta["choices"]:
        kwargs["type"] = click.Choice(meta["choices"])
    else:
        kwargs["type"] = _CLICK_TYPES[meta["kind"]]
    kwargs.update(overrides)
    return click.option(*flag_decls(f), **kwargs)


def settings_options(cls: type, *, skip: tuple[str, ...] = (), **overrides):
    """A decorator adding an option for every field of ``cls`` that has a flag;
    ``overrides`` maps a field name to extra click keywords."""

    def decorate(func):
        for f in reversed(fields(cls)):
            if f.metadata["flag"] is None or f.name in skip:
                continue
            func = setting_option(f, **overrides.get(f.name, {}))(func)
        return func

    return decorate


def settings_from_flags(cls: type, section: str, kwargs: dict, given: dict | None = None):
    """Pop ``cls``'s options from a command's kwargs and make checked settings;
    ``given`` adds values a command parsed itself (``--size`` -> width, height)."""
    values, origins = {}, {}
    for f in fields(cls):
        if f.name in kwargs:
            values[f.name] = kwargs.pop(f.name)
            origins[f.name] = flag_name(f) if f.metadata["flag"] is not None else ""
    for name, (value, origin) in (given or {}).items():
        values[name], origins[name] = value, origin
    return make_settings(cls, section, values, origins)


# The classifier options every model-loading command shares.
classifier_options = settings_options(
    ModelSettings, model={"metavar": "NAME|PATH"}, labels={"metavar": "FILE", "default": ""}
)

source_options = settings_options(SourceSettings, spec={"metavar": "SPEC"})
pipeline_options = settings_options(
    PipelineSettings,
    smooth={
        "is_flag": False,
        "flag_value": SMOOTH_FLAG_VALUE,
        "help": "Average scores over recent results so the label does not flicker "
        f"(0: off; --smooth alone: {SMOOTH_FLAG_VALUE}). --json records then carry the "
        "smoothed top-k.",
    },
    hysteresis={"metavar": "MARGIN"},
)


def pop_model_settings(kwargs: dict) -> ModelSettings:
    """Remove the classifier options from a command's kwargs, as checked settings."""
    return settings_from_flags(ModelSettings, "model", kwargs)


def pop_classifier_kwargs(kwargs: dict) -> dict:
    """Remove the classifier options from a command's kwargs, as ``Classifier`` kwargs."""
    return pop_model_settings(kwargs).classifier_kwargs()
