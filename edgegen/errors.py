"""The errors edgegen raises on purpose.

Every error a user can cause is an :class:`EdgegenError` whose message is one line that
names the problem and the fix.  The CLI turns these (and only these) into a short
message and a non-zero exit code; anything else is a bug and keeps its traceback.

Each class also derives from the closest built-in exception, so callers that already
catch ``ValueError`` or ``FileNotFoundError`` keep working.
"""

from __future__ import annotations


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
