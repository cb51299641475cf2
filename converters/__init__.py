"""Converters: PyTorch models to edgegen artifacts (needs the ``[convert]`` extra).

These modules import torch, onnx and optimum; the runtime never imports them.
"""

import logging as _logging

# optimum and optimum-onnx both install the ``optimum`` package; diffusers warns about it on
# every import, which would put a stray line before every converter message.
_logging.getLogger("diffusers.utils.import_utils").setLevel(_logging.ERROR)
