"""One line out of an exception that a library raised during conversion: the root cause, not the wrapper.

torch.onnx's exporter wraps torch.export's error in a page that starts "Failed to export the model with
torch.export. This is step 1/3 ... Next steps:" and puts the cause after it (and in ``__cause__``); a bare
first line names no cause.  :func:`cause_line` follows ``__cause__`` / ``__context__`` to the innermost
exception, takes its first line that says something, and adds the model source line the error points at
(``modeling_mixtral.py:136``) when the message names one.  No torch here.
"""

from __future__ import annotations

import re
import traceback

#: Lines of wrapper boilerplate that never name a cause.
_BOILERPLATE = re.compile(r"^(Failed to export the model with torch\.export|Failed to convert the exported program|"
                          r"This is step \d/\d|Next steps:|- |#+ |<class |Traceback|$)")
_MODEL_FRAME = re.compile(r"((?:modeling|modular)_\w+\.py):(\d+)")
MAX_CHARS = 300


def root_cause(exc: BaseException) -> BaseException:
    """The innermost exception of ``exc``'s ``__cause__`` / ``__context__`` chain (cycles stopped)."""
    seen = {id(exc)}
    while True:
        inner = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
        if inner is None or id(inner) in seen:
            return exc
        seen.add(id(inner))
        exc = inner


def _meaningful(text: str) -> str | None:
    for line in text.strip().splitlines():
        line = line.strip()
        if line and not _BOILERPLATE.match(line):
            return line
    return None


def _model_frame(exc: BaseException) -> str | None:
    """``modeling_x.py:N in fn`` of the innermost transformers frame in ``exc``'s message or traceback."""
    found = _MODEL_FRAME.findall(str(exc))
    if found:
        return f"{found[-1][0]}:{found[-1][1]}"
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if _MODEL_FRAME.search(f.filename + ":0")]
    return f"{frames[-1].filename.rsplit('/', 1)[-1]}:{frames[-1].lineno} in {frames[-1].name}" if frames else None


def cause_line(exc: BaseException) -> str:
    """``Type: first meaningful line [at modeling_x.py:N]`` of ``exc``'s root cause (one line, at most ~300
    characters); the outer message's own first meaningful line where the root cause says nothing."""
    root = root_cause(exc)
    line = _meaningful(str(root)) or _meaningful(str(exc))
    text = f"{type(root).__name__}: {line}" if line else type(root).__name__
    text = text if len(text) <= MAX_CHARS else text[:MAX_CHARS - 3] + "..."
    where = _model_frame(root) or _model_frame(exc)
    return f"{text} (at {where})" if where and where not in text else text
