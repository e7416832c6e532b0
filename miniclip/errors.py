"""The errors miniclip raises.

One small hierarchy so callers can catch everything from miniclip with `MiniclipError`, or one kind of
problem with its subclass. Each subclass also derives from the built-in exception a caller would
already expect there (`ValueError`, `TypeError`, `FileNotFoundError`), so existing `except` clauses
keep working.

Every message names the input (file, key, text index, image index), what was found and what was
expected, and where there is one, the fix.
"""


class MiniclipError(Exception):
    """Base class of every error miniclip raises on purpose."""


class CheckpointError(MiniclipError, ValueError):
    """A checkpoint (weights file, config, Hub repository) is unreadable, incomplete or does not fit."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """No checkpoint at the path or Hub id given (or not in the cache while offline)."""


class TokenizerError(MiniclipError, ValueError):
    """A text cannot be tokenized as asked (e.g. too long without truncate=True), or a bad vocabulary."""


class ImageError(MiniclipError, ValueError):
    """An image file or PIL image cannot be read or converted."""


class ImageNotFoundError(ImageError, FileNotFoundError):
    """No image file at the path given."""


class InputError(MiniclipError, ValueError):
    """A tensor handed to the model has the wrong shape, dtype, device or values."""


class InputTypeError(MiniclipError, TypeError):
    """An argument is of a type miniclip does not accept (e.g. tokenize(42))."""


class MissingDependencyError(MiniclipError, ImportError):
    """An optional dependency of one feature is not installed (the message says which extra installs it)."""


def require(module: str, extra: str, feature: str):
    """Import an optional dependency, or raise MissingDependencyError naming the pip command that adds it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingDependencyError(
            f"{feature} needs {module.split('.')[0]}, which is not installed: pip install \"miniclip[{extra}]\""
        ) from None
