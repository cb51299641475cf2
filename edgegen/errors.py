"""The errors edgegen raises on purpose.

Every error a user can cause is an :class:`EdgegenError` whose message is one line that
names the problem and the fix.  The CLI turns these (and only these) into a short
message and a non-zero exit code; anything else is a bug (the ``edgegen`` script reports it
in one line as an internal error; ``EDGEGEN_DEBUG=1`` shows its traceback).

Each class also derives from the closest built-in exception, so callers that already
catch ``ValueError`` or ``FileNotFoundError`` keep working.
"""

from __future__ import annotations

import errno
import os


class EdgegenError(Exception):
    """Base class of every error edgegen raises for bad input or a bad environment."""

    exit_code = 1


class ManifestError(EdgegenError, ValueError):
    """``edgegen.json`` is malformed: unknown key, wrong type, bad value."""


class UnsupportedFormatError(ManifestError):
    """The artifact's format version is outside the range this edgegen reads."""


class ArtifactError(EdgegenError, OSError):
    """An artifact directory is incomplete or unsafe: missing file, path escaping it."""


class IntegrityError(ArtifactError):
    """A file of the artifact does not match the sha256 recorded in the manifest."""


class GraphMismatchError(EdgegenError, ValueError):
    """A graph's real inputs/outputs disagree with what the manifest declares."""


class GraphLoadError(EdgegenError, RuntimeError):
    """ONNX Runtime refused to load a graph (unsupported op or opset, corrupt model)."""


class ProviderError(EdgegenError, RuntimeError):
    """An execution provider was asked for that the installed onnxruntime lacks."""


class UnknownFamilyError(EdgegenError, ValueError):
    """No runtime (or converter) is registered for a model family."""


class InvalidArgumentError(EdgegenError, ValueError):
    """A generation or conversion setting is out of range (temperature, top_p, steps...)."""


class ContextOverflowError(InvalidArgumentError):
    """A prompt (plus the tokens asked for) does not fit the model's context."""


class ConversionError(EdgegenError, RuntimeError):
    """Exporting, optimizing or validating a model failed."""


class UnsupportedModelError(ConversionError):
    """The source model's architecture is not one edgegen can convert."""


class CancelledError(EdgegenError):
    """A generation was cancelled by its caller."""

    exit_code = 130


class RunTimeoutError(EdgegenError, TimeoutError):
    """A graph ran longer than the time limit its artifact was loaded with (``timeout=``, ``--timeout``)."""


#: errno of a failed write -> (what went wrong, the fix); ``{option}`` names the option that chose the path
_WRITE_ERRNOS = {
    errno.ENOSPC: ("no space left on device", "free space or choose another {option}"),
    errno.EDQUOT: ("disk quota exceeded", "free space or choose another {option}"),
    errno.EROFS: ("read-only file system", "choose another {option} on a writable disk"),
    errno.EACCES: ("permission denied", "choose another {option} you may write to, or fix the folder's permissions"),
    errno.EPERM: ("operation not permitted", "choose another {option} you may write to"),
    errno.ENOTDIR: ("a folder on the way is a file", "choose another {option}"),
    errno.EEXIST: ("a folder on the way is a file", "choose another {option}"),
    errno.EISDIR: ("it is a folder", "give a file path as {option}"),
    errno.ENOENT: ("no such file or folder", "check the path or choose another {option}"),
    errno.ENAMETOOLONG: ("file name too long", "choose a shorter {option}"),
}
#: the errnos that mean the disk (not the model or the input) made a conversion fail
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})


def find_os_error(exc: BaseException | None, errnos: frozenset[int] = DISK_ERRNOS) -> OSError | None:
    """The first OSError with one of ``errnos`` in ``exc``'s chain (itself, causes, contexts): wrappers that
    turn a failure into "the export failed" keep the disk's reason there.  A wrapper that dropped the chain
    but kept the text ("[Errno 28] No space left on device") is read from its message."""
    chain: list[BaseException] = []
    while exc is not None and all(exc is not seen for seen in chain):
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    for link in chain:
        if isinstance(link, OSError) and link.errno in errnos:
            return link
    for link in chain:
        text = str(link)
        for number in errnos:   # strerror alone only for a full disk: "Permission denied" is too common a phrase
            if f"[Errno {number}]" in text or (number in (errno.ENOSPC, errno.EDQUOT) and os.strerror(number) in text):
                return OSError(number, os.strerror(number))
    return None


def describe_os_error(exc: OSError, *, option: str = "-o") -> tuple[str, str] | None:
    """(what went wrong, the fix) for an OSError of the disk or the path (``option`` names what chose the
    path), or None for an errno edgegen has no words for."""
    known = _WRITE_ERRNOS.get(exc.errno or 0)
    return None if known is None else (known[0], known[1].format(option=option))


def write_error_line(exc: OSError, path: str | os.PathLike[str], *, option: str = "-o") -> str:
    """One line for a failed write of ``path``: what went wrong and the fix, e.g. "no space left on device
    writing out.png: free space or choose another -o"."""
    what, fix = describe_os_error(exc, option=option) or (exc.strerror or str(exc) or type(exc).__name__,
                                                          f"choose another {option}")
    return f"{what} writing {os.fspath(path)}: {fix}"
