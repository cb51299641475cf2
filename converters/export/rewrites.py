"""What the image exporter (:mod:`edgegen.converters.export.graph`) substitutes in a forward so that it exports.

1. Fallbacks for custom fused ops.  Real StyleGAN2 code runs its fused bias-activation and
   upfirdn2d through ``torch.autograd.Function`` subclasses whose forward calls a compiled
   extension (rosinality's op/fused_act.py and op/upfirdn2d.py), or through custom ops under
   ``torch.ops.<namespace>``; neither exports.  Inside :class:`Fallbacks` (entered around a
   whole conversion):

   - ``torch.autograd.Function.apply`` is patched (a TorchFunctionMode never sees it): a
     Function class with a fallback runs the fallback on the same arguments instead, one without
     runs its ``forward`` directly (no autograd: the converter only runs inference);
   - as a TorchFunctionMode it swaps calls of a ``torch.ops`` op with a fallback for that.

   The table is the spec's ``fallbacks`` over :data:`KNOWN` (rosinality's classes, matched by
   class name and module name suffix, used only when hit).  A custom op left without one is
   reported by the exporter's recorder with the module path (:func:`custom_op`, :func:`blocker`).

2. Batch-grouped convolutions.  StyleGAN2's modulated conv folds the batch into the channels
   and calls ``conv2d(x [1, B*Cin, H, W], w [B*Cout, Cin, k, k], groups=B)`` (and
   ``conv_transpose2d(..., groups=B)`` to upsample); exported, ``group`` is a constant equal to
   the export batch.  :func:`conv2d_any_groups` and :func:`conv_transpose2d_any_groups` compute
   the same with the groups on a tensor axis: im2col as a depthwise Conv with a fixed one-hot
   kernel [Cin_g*k*k, 1, k, k] (keeping stride, padding, dilation), a batched MatMul with the
   per-group weights, and for the transposed conv col2im as a depthwise ConvTranspose with the
   same one-hot kernel.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch.autograd import Function
from torch.overrides import TorchFunctionMode


# -- 1. fallbacks for custom ops -----------------------------------------------------------------------------
def fused_leaky_relu(input: torch.Tensor, bias: torch.Tensor | None, negative_slope: float = 0.2,
                     scale: float = 2 ** 0.5) -> torch.Tensor:
    """rosinality's ``FusedLeakyReLUFunction.apply(input, bias, negative_slope, scale)`` in plain PyTorch:
    leaky_relu(input + bias) * scale, bias [C] on axis 1 of input [N, C, ...]."""
    if bias is not None:
        input = input + bias.view(1, -1, *[1] * (input.ndim - 2))
    return F.leaky_relu(input, negative_slope) * scale


def upfirdn2d(input: torch.Tensor, kernel: torch.Tensor, up: tuple[int, int], down: tuple[int, int],
              pad: tuple[int, int, int, int]) -> torch.Tensor:
    """rosinality's ``UpFirDn2d.apply(input, kernel, (up_x, up_y), (down_x, down_y), (pad_x0, pad_x1, pad_y0,
    pad_y1))`` in plain PyTorch: upsample by zero insertion, pad (negative: crop), FIR filter, downsample."""
    (up_x, up_y), (down_x, down_y), (px0, px1, py0, py1) = up, down, pad
    _, c, h, w = input.shape
    kh, kw = kernel.shape
    x = input.reshape(-1, 1, h, 1, w, 1)                                   # [N*C, 1, H, 1, W, 1]
    x = F.pad(x, [0, up_x - 1, 0, 0, 0, up_y - 1])                         # zeros after each pixel
    x = x.reshape(-1, 1, h * up_y, w * up_x)                               # [N*C, 1, H*up_y, W*up_x]
    x = F.pad(x, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
    x = x[:, :, max(-py0, 0):x.shape[2] - max(-py1, 0), max(-px0, 0):x.shape[3] - max(-px1, 0)]
    x = F.conv2d(x, torch.flip(kernel, [0, 1]).view(1, 1, kh, kw).to(x.dtype))   # FIR: true convolution
    x = x[:, :, ::down_y, ::down_x]
    return x.reshape(-1, c, x.shape[2], x.shape[3])                        # [N, C, H', W']


#: (class name, module name suffix) -> plain-PyTorch fallback, for known third-party Functions
KNOWN: dict[tuple[str, str], Callable[..., Any]] = {
    ("FusedLeakyReLUFunction", "fused_act"): fused_leaky_relu,             # rosinality/stylegan2-pytorch
    ("UpFirDn2d", "upfirdn2d"): upfirdn2d,
}


def _known(cls: type) -> Callable[..., Any] | None:
    module = getattr(cls, "__module__", "") or ""
    for (name, suffix), fn in KNOWN.items():
        if cls.__name__ == name and (module == suffix or module.endswith("." + suffix)):
            return fn
    return None


def is_op(key: Any) -> bool:
    return isinstance(key, (torch._ops.OpOverload, torch._ops.OpOverloadPacket))


def _packet(key: Any) -> Any:
    return key.overloadpacket if isinstance(key, torch._ops.OpOverload) else key


def op_name(op: Any) -> str:
    """"ns::name" of a torch.ops op (packet or overload)."""
    return _packet(op)._qualified_op_name


def describe(key: Any) -> str:
    """How a fallback key reads in messages: "FusedLeakyReLUFunction (op.fused_act)", "torch.ops.ns.op"."""
    if is_op(key):
        return "torch.ops." + op_name(key).replace("::", ".")
    return f"{key.__name__} ({key.__module__})" if isinstance(key, type) else repr(key)


class Fallbacks(TorchFunctionMode):
    """Run fallbacks for custom autograd.Functions and torch.ops ops while active (see the module docstring).

    ``running``: the custom Functions running now without a fallback, innermost last;
    ``unreplaced``: every custom Function that ran without one (for hints when an export fails);
    ``failed``: the innermost custom Function an exception came out of (reset by the recorder).
    """

    _active: list[Fallbacks] = []

    def __init__(self, table: Mapping[Any, Callable[..., Any]] | None = None) -> None:
        super().__init__()
        self.table = {_packet(key): fn for key, fn in (table or {}).items()}   # an op's overloads share it
        self.running: list[type] = []
        self.unreplaced: dict[type, None] = {}
        self.failed: type | None = None

    @classmethod
    def current(cls) -> Fallbacks | None:
        return cls._active[-1] if cls._active else None

    def lookup(self, key: Any) -> Callable[..., Any] | None:
        fn = self.table.get(_packet(key))
        if fn is None and isinstance(key, type):
            fn = _known(key)
        return fn

    def __enter__(self) -> Fallbacks:
        self._saved = Function.__dict__["apply"]                            # a classmethod

        def apply(cls: type, *args: Any, **kwargs: Any) -> Any:
            fn = self.lookup(cls)
            if fn is not None:
                return fn(*args, **kwargs)
            self.running.append(cls)
            self.unreplaced.setdefault(cls)
            try:
                return _forward(cls, args, kwargs)
            except Exception:
                self.failed = self.failed or cls
                raise
            finally:
                self.running.pop()

        Function.apply = classmethod(apply)   # type: ignore[method-assign,assignment]
        Fallbacks._active.append(self)
        return super().__enter__()

    def __exit__(self, *exc: Any) -> None:
        super().__exit__(*exc)
        Fallbacks._active.remove(self)
        Function.apply = self._saved          # type: ignore[method-assign]

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        fn = self.lookup(func) if is_op(func) else None
        return (fn or func)(*args, **(kwargs or {}))

    def hint(self) -> str:
        """For an export that failed or computes something else: the custom Functions that ran as they are."""
        if not self.unreplaced:
            return ""
        names = ", ".join(describe(cls) for cls in self.unreplaced)
        first = next(iter(self.unreplaced)).__name__
        return (f" (custom autograd.Functions ran without a fallback: {names}; if one calls a compiled extension, "
                f"give the spec fallbacks={{{first}: <its plain-PyTorch version>}})")


class _Context:
    """What a Function's forward may call on ``ctx``; the converter never runs a backward."""

    def __getattr__(self, name: str) -> Any:
        if name in ("save_for_backward", "mark_dirty", "mark_non_differentiable", "set_materialize_grads"):
            return lambda *args, **kwargs: None
        raise AttributeError(name)


def _forward(cls: type, args: tuple, kwargs: dict) -> Any:
    """A custom Function's forward called directly: the trace then holds its ops, not a PythonOp the
    exporter must inline (it cannot when the Function takes non-tensor arguments)."""
    from torch.autograd.function import _is_setup_context_defined

    if _is_setup_context_defined(cls.setup_context):   # new style: forward(*args), no ctx
        return cls.forward(*args, **kwargs)
    return cls.forward(_Context(), *args, **kwargs)


def custom_op(func: Any, opset: int) -> str | None:
    """"ns::name" for a torch.ops op outside aten/prim that has no ONNX symbolic at ``opset``, else None."""
    if not is_op(func):
        return None
    name = op_name(func)
    if name.partition("::")[0] in ("aten", "prim", "prims"):
        return None
    try:
        from torch.onnx._internal.torchscript_exporter.registration import registry
    except ImportError:   # the private registry moved in this torch: assume it does not export
        return name
    return None if registry.is_registered_op(name, opset) else name


def blocker(op: str, func: Any, where: str) -> str:
    """The one-line finding for a custom op that runs without a fallback (inside custom Function ``func``, if any)."""
    fallbacks = Fallbacks.current()
    inside = fallbacks.running[-1] if fallbacks and fallbacks.running else None
    if inside is not None:
        return (f"{where} calls {describe(inside)}, a custom autograd.Function running the custom op {op} that has "
                f"no ONNX export: give the spec fallbacks={{{inside.__name__}: <its plain-PyTorch version>}} (called "
                "with the same arguments as .apply)")
    return (f"{where} calls the custom op {op} that has no ONNX export: give the spec "
            f"fallbacks={{{describe(func)}: <a plain-PyTorch function with the same arguments>}}")


# -- 2. convolutions whose groups follow the batch ----------------------------------------------------------
#: functional conv -> the position of its ``groups`` argument
GROUPED_CONVS = {"conv2d": 6, "conv_transpose2d": 6}


def conv_groups(name: str, args: tuple, kwargs: dict) -> int:
    i = GROUPED_CONVS[name]
    return int(args[i] if len(args) > i else kwargs.get("groups", 1))


def _one_hot_kernel(channels: int, kh: int, kw: int, like: torch.Tensor) -> torch.Tensor:
    """[channels*kh*kw, 1, kh, kw]: output channel c*kh*kw + i*kw + j picks tap (i, j) of channel c."""
    eye = torch.eye(kh * kw, dtype=like.dtype, device=like.device).view(kh * kw, 1, kh, kw)
    return eye.repeat(channels, 1, 1, 1)


def conv2d_any_groups(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, stride: Any = 1,
                      padding: Any = 0, dilation: Any = 1, groups: int = 1) -> torch.Tensor:
    """``F.conv2d`` with the groups on a tensor axis: input [N, G*Cin_g, H, W], weight [G*Cout_g, Cin_g, kh, kw]
    -> [N, G*Cout_g, H', W'] (string padding is not supported: StyleGAN2 code passes numbers)."""
    cin_g, kh, kw = (int(d) for d in weight.shape[1:])
    cout_g, k = int(weight.shape[0]) // int(groups), cin_g * kh * kw       # int(): traced, groups is the batch
    n, _, h, w = input.shape
    x = input.reshape(-1, cin_g, h, w)                                               # [N*G, Cin_g, H, W]
    cols = F.conv2d(x, _one_hot_kernel(cin_g, kh, kw, x), None, stride, padding, dilation, cin_g)   # im2col
    ho, wo = cols.shape[2], cols.shape[3]                                            # [N*G, K, H', W']
    out = torch.matmul(weight.reshape(-1, cout_g, k), cols.reshape(n, -1, k, ho * wo))   # [N, G, Cout_g, H'W']
    out = out.reshape(n, -1, ho, wo)                                                 # [N, G*Cout_g, H', W']
    return out if bias is None else out + bias.view(1, -1, 1, 1)


def conv_transpose2d_any_groups(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                                stride: Any = 1, padding: Any = 0, output_padding: Any = 0, groups: int = 1,
                                dilation: Any = 1) -> torch.Tensor:
    """``F.conv_transpose2d`` with the groups on a tensor axis: input [N, G*Cin_g, H, W], weight
    [G*Cin_g, Cout_g, kh, kw] -> [N, G*Cout_g, H', W']."""
    cout_g, kh, kw = (int(d) for d in weight.shape[1:])
    cin_g, k = int(weight.shape[0]) // int(groups), cout_g * kh * kw
    n, _, h, w = input.shape
    wt = weight.reshape(-1, cin_g, k).transpose(1, 2)                                # [G, K, Cin_g]
    cols = torch.matmul(wt, input.reshape(n, -1, cin_g, h * w))                      # [N, G, K, H*W]
    out = F.conv_transpose2d(cols.reshape(-1, k, h, w), _one_hot_kernel(cout_g, kh, kw, input), None, stride,
                             padding, output_padding, cout_g, dilation)             # col2im: [N*G, Cout_g, H', W']
    out = out.reshape(n, -1, out.shape[2], out.shape[3])                             # [N, G*Cout_g, H', W']
    return out if bias is None else out + bias.view(1, -1, 1, 1)


ANY_GROUPS = {"conv2d": conv2d_any_groups, "conv_transpose2d": conv_transpose2d_any_groups}
