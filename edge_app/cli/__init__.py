"""The ``edge-app`` command line: thin click commands over the library.

Subcommands are imported only when used (click's lazy-group pattern), so
``edge-app models list`` does not pay for OpenCV or MQTT imports and start-up stays fast
on a Pi's slow storage.
"""

from __future__ import annotations

import errno
import importlib
import logging
import os
import signal
import sys

import click

from edge_app import __version__
from edge_app.errors import EXIT_INTERRUPTED, EXIT_USAGE, EdgeAppError, Interrupted

# command name -> "module:attribute"
COMMANDS = {
    "classify": "edge_app.cli.classify_cmd:classify",
    "eval": "edge_app.cli.eval_cmd:eval_command",
    "bench": "edge_app.cli.bench_cmd:bench",
    "models": "edge_app.cli.models_cmd:models",
    "run": "edge_app.cli.run_cmd:run",
    "serve": "edge_app.cli.serve_cmd:serve",
    "config": "edge_app.cli.config_cmd:config",
    "mqtt": "edge_app.cli.mqtt_cmd:mqtt",
    "learn": "edge_app.cli.learn_cmd:learn",
}


class LazyGroup(click.Group):
    """A group that imports each subcommand on first use and turns user errors into
    one readable line and the error's exit code."""

    def list_commands(self, ctx):
        return sorted(COMMANDS)

    def get_command(self, ctx, cmd_name):
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        module = importlib.import_module(module_name)
        return getattr(module, attr)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except EdgeAppError as exc:
            if Interrupted.received is not None:  # the error came from the interruption
                _report_interrupt(ctx, Interrupted(Interrupted.received))
            click.echo(f"edge-app: error: {exc.message}", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt as exc:  # Ctrl-C, or Interrupted (SIGINT/SIGTERM)
            _report_interrupt(ctx, exc)
        except OSError as exc:  # (click would exit 1 on EPIPE, silently)
            if exc.errno not in _WRITE_ERRORS:
                raise
            _silence_stdout()
            click.echo(f"edge-app: error: cannot write the output: {exc.strerror}", err=True)
            ctx.exit(EXIT_USAGE)


def _report_interrupt(ctx, exc: KeyboardInterrupt):
    signum = getattr(exc, "signum", signal.SIGINT)
    what = "terminated" if signum == signal.SIGTERM else "interrupted"
    click.echo(f"edge-app: {what}", err=True)
    ctx.exit(getattr(exc, "exit_code", EXIT_INTERRUPTED))


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edge-app")
@click.option("-v", "--verbose", count=True, help="More log detail (-vv for debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors on stderr.")
def cli(verbose: int, quiet: bool) -> None:
    """Classify camera frames, videos and image folders on a Raspberry Pi with an int8
    MobileNet V1 (TFLite, XNNPACK).

    \b
    Live:     edge-app run                      (camera, video file or URL, with overlay)
    Service:  edge-app serve --config FILE      (web view, JSON API, MQTT; for systemd)
    Folders:  edge-app classify PHOTOS/ --output results.jsonl
    Models:   edge-app models list | info | fetch
    """
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    logging.basicConfig(
        level=level, format="edge-app: %(levelname)s: %(message)s", stream=sys.stderr
    )


def _usage_line(exc: click.UsageError) -> str:
    """A click usage error as one line, with where to read more."""
    ctx = exc.ctx
    hint = f" (see: {ctx.command_path} -h)" if ctx is not None else ""
    return f"edge-app: error: {' '.join(exc.format_message().split())}{hint}"


def interrupt_handler():
    """A handler raising Interrupted in this process only: a child forked before it set
    its own handlers (a pool's worker) dies of the signal quietly instead of printing a
    traceback."""
    owner = os.getpid()

    def handler(signum, frame):
        if os.getpid() != owner:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        raise Interrupted(signum)

    return handler


def main() -> None:
    """Every failure is one line on stderr and an exit code (click's usage errors too)."""
    # SIGTERM ends any command like Ctrl-C, with one line and exit 143 (serve and run
    # install their own handlers once they are running).
    signal.signal(signal.SIGTERM, interrupt_handler())
    try:
        code = _run()
    except SystemExit as exc:
        code = exc.code
    sys.exit(_flushed(code))


def _run():
    try:
        code = cli.main(prog_name="edge-app", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as exc:
        exc.show()  # `edge-app` alone: the help, as a user expects
        return exc.exit_code
    except click.UsageError as exc:
        click.echo(_usage_line(exc), err=True)
        return exc.exit_code
    except click.ClickException as exc:
        click.echo(f"edge-app: error: {' '.join(exc.format_message().split())}", err=True)
        return exc.exit_code
    except click.Abort:
        click.echo("edge-app: interrupted", err=True)
        return EXIT_INTERRUPTED
    except OSError as exc:
        if exc.errno not in _WRITE_ERRORS:
            return _internal_error(exc)
        _silence_stdout()
        click.echo(f"edge-app: error: cannot write the output: {exc.strerror}", err=True)
        return EXIT_USAGE
    except Exception as exc:
        return _internal_error(exc)
    return code if isinstance(code, int) else 0


# Writing stdout failed: a full disk, a closed pipe (`| head`), a vanished terminal.
_WRITE_ERRORS = {errno.ENOSPC, errno.EPIPE, errno.EDQUOT, errno.EIO, errno.EROFS, errno.EBADF}


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's last flush cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


def _flushed(code):
    """Flush stdout now, while a failure can still be one line and exit 2."""
    try:
        sys.stdout.flush()
    except OSError as exc:
        _silence_stdout()
        if code in (0, 1, None):
            click.echo(f"edge-app: error: cannot write the output: {exc.strerror}", err=True)
            return EXIT_USAGE
    except ValueError:
        pass  # stdout closed
    return code


def _internal_error(exc: Exception) -> int:
    """A bug: still one line for the user, the traceback on request."""
    if os.environ.get("EDGE_APP_DEBUG"):
        raise exc
    click.echo(
        f"edge-app: error: internal error: {type(exc).__name__}: {exc} "
        "(EDGE_APP_DEBUG=1 shows the traceback; please report it)",
        err=True,
    )
    return EXIT_USAGE
