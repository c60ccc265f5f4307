"""What every `clip` command shares: exit codes, the errors a user can fix, one way to run a command
and turn expected failures into one line, the model options, opening images, name -> path.

A command is a parser and a ``run(args) -> int``; :func:`run_command` runs it. Expected failures are
raised as :class:`UsageError` (bad input: exit 2) or :class:`CommandFailure` (the model or the work
failed: exit 1) and printed as one ``clip NAME: error: ...`` line; Ctrl-C prints one line and exits
130; an image Pillow refuses to decode (too many pixels, truncated, not an image) is bad input.
Anything else is a bug and keeps its traceback.
"""

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, List, Optional, Sequence, TextIO, Tuple

if TYPE_CHECKING:
    from PIL import Image

    from .._weights.sources import Located, WeightsNotOnDisk

__all__ = [
    "EXIT_OK",
    "EXIT_FAILURE",
    "EXIT_USAGE",
    "EXIT_INTERRUPTED",
    "ALLOW_DOWNLOAD_ENV",
    "ALLOW_DOWNLOAD_VALUE",
    "UsageError",
    "CommandFailure",
    "ModelLoadError",
    "run_command",
    "report",
    "shorten",
    "cli_advice",
    "print_line",
    "add_model_arguments",
    "download_allowed",
    "load_model",
    "open_image",
    "checkpoint_to_load",
    "weights_file",
    "nonempty_texts",
]

EXIT_OK = 0
EXIT_FAILURE = 1  # the model could not be loaded or run, or the work failed (bad checkpoint, device)
EXIT_USAGE = 2  # bad arguments or input the user can fix (argparse uses 2 too)
EXIT_INTERRUPTED = 130  # the shell's status for Ctrl-C (128 + SIGINT)

ALLOW_DOWNLOAD_ENV = "CLIP_ALLOW_DOWNLOAD"
ALLOW_DOWNLOAD_VALUE = "1"
SHOWN_CHARACTERS = 80  # a value echoed in a message is cut to this many characters
# Advice in the library's messages, written for the Python API, and what a command-line user does.
API_TO_CLI_ADVICE = (
    ("Pass device='cpu'", "Pass --device cpu"),
    ("pass device='cpu'", "pass --device cpu"),
    ("pass download_root=...", "pass --download-root DIR"),
    ("Try jit=False", "Try without --jit"),
    ("pass truncate=True to keep the start", "shorten the text"),
)


class UsageError(Exception):
    """Bad input the user can fix: one message, exit status EXIT_USAGE."""


class CommandFailure(Exception):
    """The work could not be done (a model that cannot be loaded or run): exit status EXIT_FAILURE."""


class ModelLoadError(CommandFailure):
    """The model could not be loaded or run."""


def report(prog: str, message: str) -> None:
    """Print ``PROG: error: MESSAGE`` on stderr."""
    print(f"{prog}: error: {message}", file=sys.stderr)


def shorten(value: str, limit: int = SHOWN_CHARACTERS) -> str:
    """`value` as a message shows it: repr'd, and cut with its length said when it is long."""
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}... ({len(value)} characters)"


def cli_advice(message: str) -> str:
    """`message` with the Python API's advice (``device='cpu'``, ``download_root=...``,
    ``truncate=True``) rewritten as what a command-line user does (``--device cpu``, ...)."""
    for api, cli in API_TO_CLI_ADVICE:
        message = message.replace(api, cli)
    return message


def print_line(line: str, out: Optional[TextIO] = None) -> None:
    """Print `line` to `out` (default: stdout). A file name that is not valid UTF-8 (its bytes held as
    surrogates, as os.listdir and sys.argv give them) is written as its original bytes, so that what
    is printed can be used as the path again."""
    out = sys.stdout if out is None else out
    try:
        print(line, file=out)
    except UnicodeEncodeError:
        encoded = (line + "\n").encode(out.encoding or "utf-8", "surrogateescape")
        buffer = getattr(out, "buffer", None)
        if buffer is None:  # a text-only stream: the bytes cannot go through, show them escaped
            print(encoded.decode(out.encoding or "utf-8", "backslashreplace"), end="", file=out)
            return
        out.flush()
        buffer.write(encoded)
        buffer.flush()


def run_command(
    prog: str,
    parser: argparse.ArgumentParser,
    run: Callable[[argparse.Namespace], int],
    argv: Sequence[str],
    interrupted: str = "",
) -> int:
    """Parse `argv` with `parser` and `run` it; return the exit status.

    Expected failures become one ``PROG: error: ...`` line on stderr and an exit status (see the
    module docstring); `interrupted` is what Ctrl-C adds to its line (what was kept, how to resume).
    """
    try:
        args = parser.parse_args(list(argv))
    except SystemExit as exc:  # --help, or argparse's own usage errors (already printed)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        return run(args)
    except UsageError as exc:
        report(prog, str(exc))
        return EXIT_USAGE
    except CommandFailure as exc:
        report(prog, str(exc))
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print(f"\n{prog}: interrupted{'; ' + interrupted if interrupted else ''}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `clip search ... | head`: the reader has gone; nothing left to say
        _silence_stdout()
        return EXIT_OK
    except Exception as exc:
        message = _image_refused(exc)
        if message is None:
            raise
        report(prog, message)
        return EXIT_USAGE


def _image_refused(exc: BaseException) -> Optional[str]:
    """The message for an image Pillow refused to decode, or None for any other exception."""
    pil = sys.modules.get("PIL.Image")
    if pil is not None and isinstance(exc, pil.DecompressionBombError):
        return f"{exc}; such an image is refused as a possible decompression bomb"
    return None


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that Python's flush at exit does not raise again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def add_model_arguments(parser: argparse.ArgumentParser, default_model: Optional[str]) -> None:
    """--model, --device, --download-root and --download, as every model-loading command has them."""
    shown = default_model or "the model of the embeddings"
    parser.add_argument(
        "--model",
        default=default_model,
        help=f"a released model name or a checkpoint file (default: {shown})",
    )
    parser.add_argument(
        "--device", default=None, help='"cpu", "cuda", "cuda:1", ... (default: cuda if available)'
    )
    parser.add_argument(
        "--download-root",
        default=None,
        metavar="DIR",
        help="directory of cached released weights (default: $CLIP_CACHE_DIR, else ~/.cache/clip)",
    )
    parser.add_argument(
        "--download",
        action="store_true",
        help=f"download released weights missing from the cache (also: {ALLOW_DOWNLOAD_ENV}=1)",
    )


def download_allowed(flag: bool) -> bool:
    """Whether released weights may be downloaded: --download, or CLIP_ALLOW_DOWNLOAD=1."""
    return flag or os.environ.get(ALLOW_DOWNLOAD_ENV) == ALLOW_DOWNLOAD_VALUE


def load_model(
    model: str, device: Optional[str], download_root: Optional[str], download: bool, jit: bool = False
) -> Tuple[Any, Callable[..., Any]]:
    """`clip.load` for a command: cached weights only unless downloads are allowed.

    Raises UsageError for weights that are missing, ModelLoadError when they cannot be loaded.
    """
    from ..clip import CheckpointError, DownloadError, default_cache_dir, load

    root = download_root or default_cache_dir()
    try:
        checkpoint = checkpoint_to_load(model, root, download_allowed(download))
        return load(checkpoint, device=device, jit=jit, download_root=root)
    except (CheckpointError, DownloadError, RuntimeError, ValueError) as exc:
        raise ModelLoadError(f"cannot load {shorten(model)}: {cli_advice(str(exc))}") from exc


def open_image(path: Path) -> "Image.Image":
    """The decoded image at `path`, or a UsageError that says why it cannot be read."""
    from PIL import Image, UnidentifiedImageError

    if not path.exists():
        raise UsageError(f"image not found: {path}")
    if path.is_dir():
        raise UsageError(f"{path} is a directory; pass image files")
    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except Image.DecompressionBombError as exc:
        raise UsageError(f"{path}: {exc}; such an image is refused as a possible decompression bomb") from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise UsageError(f"cannot read {path} as an image: {exc}") from exc


MODEL_FILE_ADVICE = "--model path/to/checkpoint.pt"  # how most commands take a checkpoint file


def checkpoint_to_load(
    model: str, root: str, allow_download: bool, file_advice: str = MODEL_FILE_ADVICE
) -> str:
    """What to pass to `clip.load`: the name (download allowed), the verified file on disk, or a path.

    Without permission to download, nothing here touches the network: a released model must already
    be on disk (the release file in `root` with the right SHA256, or a hub copy `clip.load` would
    find: see clip/_weights/sources.py), or a UsageError says how to provide it (`file_advice`: how
    this command takes a checkpoint file instead).
    """
    from ..clip import _MODELS, available_models

    if model in _MODELS:
        return model if allow_download else _weights_on_disk(model, root, file_advice)
    if os.path.isfile(model):
        return model
    if os.path.isdir(model):
        from .._weights.formats import DIRECTORY_WEIGHT_FILES

        if any(os.path.isfile(os.path.join(model, name)) for name in DIRECTORY_WEIGHT_FILES):
            return model  # a transformers model directory, or a folder of a hub copy
        raise UsageError(
            f"--model {model}: is a directory without model weights ({', '.join(DIRECTORY_WEIGHT_FILES)}); "
            "pass a checkpoint file inside it"
        )
    raise UsageError(
        f"--model {shorten(model)}: neither a released model ({', '.join(available_models())}) nor an "
        "existing checkpoint file"
    )


def _weights_on_disk(model: str, root: str, file_advice: str) -> str:
    """The verified file of the released `model` already on disk (nothing touches the network), named
    on stderr when it is not the release's own; a UsageError saying how to provide one otherwise."""
    from .._weights.sources import WeightsNotOnDisk, resolve

    try:
        located = resolve(model, root, allow_download=False)
    except WeightsNotOnDisk as exc:
        raise UsageError(_not_on_disk_message(exc, file_advice)) from exc
    except ValueError as exc:  # CLIP_WEIGHTS_SOURCE set to something else than auto/release/hub
        raise UsageError(str(exc)) from exc
    _say_copy_used(located)
    return located.path


def _say_copy_used(located: "Located") -> None:
    """Name, on stderr, a copy of the weights that is not the release's own file (a hub copy)."""
    if not located.is_release_file:
        print(f"clip: using {located.source} ({located.path})", file=sys.stderr)


def _not_on_disk_message(missing: "WeightsNotOnDisk", file_advice: str) -> str:
    """What a command says when a released model's weights are not on disk (a WeightsNotOnDisk)."""
    how = (
        f"To provide it, do one of:\n"
        f"  - download it now: add --download (or set {ALLOW_DOWNLOAD_ENV}={ALLOW_DOWNLOAD_VALUE})\n"
        f"  - download {missing.url}\n"
        f"    and save it as {missing.path}\n"
        f"  - use another cache directory that holds it: --download-root DIR or CLIP_CACHE_DIR=DIR\n"
        f"  - pass a checkpoint file instead: {file_advice}"
    )
    if not missing.mismatched:
        return (
            f"the weights of {missing.name} are not in the cache: {missing.path} does not exist "
            f"(cache directory: {missing.root}; no hub copy there or in the Hugging Face cache "
            f"{missing.hf_cache} either).\n{how}"
        )
    return (
        f"{missing.path} exists but its SHA256 does not match the release (an incomplete or "
        f"damaged download?). Delete it, then:\n{how}"
    )


def weights_file(
    model: str, download_root: Optional[str], download: bool, file_advice: str = MODEL_FILE_ADVICE
) -> str:
    """A path to read `model`'s weights from, for commands that read the file themselves (convert,
    train): `checkpoint_to_load`'s answer, a released model it may download fetched into the cache
    first. A failed download is a CommandFailure worded for the command line (--download-root)."""
    from .._weights.sources import resolve
    from ..clip import _MODELS, DownloadError, default_cache_dir

    root = download_root or default_cache_dir()
    checkpoint = checkpoint_to_load(model, root, download_allowed(download), file_advice)
    if checkpoint != model or model not in _MODELS:
        return checkpoint
    try:
        located = resolve(model, root, allow_download=True)
    except DownloadError as exc:
        reasons = [line for line in exc.problem.splitlines() if line.startswith("  - ")] or [exc.problem]
        raise CommandFailure(
            f"cannot download the weights of {model}:\n" + "\n".join(reasons) + "\n"
            f"To place the file by hand, download {exc.url} and save it as {exc.path}, or use a cache "
            "directory that holds it: --download-root DIR"
        ) from exc
    except ValueError as exc:  # CLIP_WEIGHTS_SOURCE or CLIP_DOWNLOAD_TIMEOUT is invalid
        raise UsageError(str(exc)) from exc
    _say_copy_used(located)
    return located.path


def nonempty_texts(values: List[str], what: str) -> List[str]:
    """`values` unchanged, or a UsageError naming the first empty (or blank) one."""
    for number, value in enumerate(values, start=1):
        if not value.strip():
            raise UsageError(f"{what} {number} is empty; give some text")
    return values
