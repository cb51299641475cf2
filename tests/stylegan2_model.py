"""A tiny StyleGAN2 generator written after rosinality/stylegan2-pytorch (MIT), ``model.py`` and ``op/``.

Same structure and formulas: mapping = PixelNorm + EqualLinear (lr_mul 0.01, fused leaky ReLU) with
``mean_latent``; synthesis = ConstantInput, StyledConv (ModulatedConv2d: demodulated weights per
sample, the batch folded into the channels, ``conv2d(..., groups=batch)``, upsampling by
``conv_transpose2d(..., stride=2, groups=batch)`` + Blur(upfirdn2d); NoiseInjection; FusedLeakyReLU),
ToRGB with an Upsample(upfirdn2d) skip, one w broadcast to ``n_latent`` per-layer styles.

The fused ops are what blocks exporting the real code: ``FusedLeakyReLUFunction`` and ``UpFirDn2d`` are
``torch.autograd.Function`` subclasses whose forward calls a compiled extension.  Here the
"extension" is two torch.library custom ops in namespace ``stylegan2_ext`` with CPU kernels (no ONNX
symbolic, no fake kernel): they run in PyTorch and the exporter cannot export them, like rosinality's
pybind module.  The kernels are written differently from the ``*_native`` versions (zero insertion by
strided assignment, depthwise FIR), so the native fallbacks are checked against an independent
implementation.  As rosinality's ``op/`` does, the module gives ``fused_leaky_relu_native`` and
``upfirdn2d_native``; unlike it (whose wrappers take the native path on CPU) the wrappers always call
the Function, as rosinality's code does on a GPU.

Differences, all for the tests: tiny sizes; ``conv2d_gradfix`` is plain ``F.conv2d`` (what it calls
outside training); no backward passes, no discriminator; the zero-initialised biases and noise
strengths get random values so that they matter.
"""

from __future__ import annotations

import math
import random
from typing import Optional

import torch
from torch import nn
from torch.autograd import Function
from torch.nn import functional as F

torch.set_num_threads(1)

SIZE, STYLE_DIM, N_MLP = 16, 32, 2
CHANNELS = {4: 32, 8: 32, 16: 16}


# -- the "compiled extension" ---------------------------------------------------------------------------------
def _define_extension() -> None:
    if hasattr(torch.ops.stylegan2_ext, "fused_bias_act"):   # defined once per process
        return

    @torch.library.custom_op("stylegan2_ext::fused_bias_act", mutates_args=(), device_types="cpu")
    def fused_bias_act(input: torch.Tensor, bias: Optional[torch.Tensor], negative_slope: float,
                       scale: float) -> torch.Tensor:
        x = input if bias is None else input + bias.view(1, -1, *[1] * (input.ndim - 2))
        return torch.where(x >= 0, x, x * negative_slope) * scale

    @torch.library.custom_op("stylegan2_ext::upfirdn2d", mutates_args=(), device_types="cpu")
    def upfirdn2d_kernel(input: torch.Tensor, kernel: torch.Tensor, up_x: int, up_y: int, down_x: int, down_y: int,
                         pad_x0: int, pad_x1: int, pad_y0: int, pad_y1: int) -> torch.Tensor:
        n, c, h, w = input.shape
        x = input.new_zeros(n, c, h * up_y, w * up_x)
        x[:, :, ::up_y, ::up_x] = input                                       # zero insertion
        x = F.pad(x, [pad_x0, pad_x1, pad_y0, pad_y1])                        # negative pads crop
        fir = torch.flip(kernel, [0, 1]).expand(c, 1, *kernel.shape)          # depthwise FIR
        return F.conv2d(x, fir, groups=c)[:, :, ::down_y, ::down_x].contiguous()


_define_extension()


class FusedLeakyReLUFunction(Function):
    @staticmethod
    def forward(ctx, input, bias, negative_slope, scale):
        return torch.ops.stylegan2_ext.fused_bias_act(input, bias, negative_slope, scale)


class UpFirDn2d(Function):
    @staticmethod
    def forward(ctx, input, kernel, up, down, pad):
        return torch.ops.stylegan2_ext.upfirdn2d(input, kernel, *up, *down, *pad)


def fused_leaky_relu(input, bias=None, negative_slope=0.2, scale=2 ** 0.5):
    return FusedLeakyReLUFunction.apply(input, bias, negative_slope, scale)


def upfirdn2d(input, kernel, up=1, down=1, pad=(0, 0)):
    return UpFirDn2d.apply(input, kernel, (up, up), (down, down), (pad[0], pad[1], pad[0], pad[1]))


def fused_leaky_relu_native(input, bias=None, negative_slope=0.2, scale=2 ** 0.5):
    if bias is not None:
        rest_dim = [1] * (input.ndim - bias.ndim - 1)
        return F.leaky_relu(input + bias.view(1, bias.shape[0], *rest_dim), negative_slope=negative_slope) * scale
    return F.leaky_relu(input, negative_slope=negative_slope) * scale


def upfirdn2d_native(input, kernel, up_x, up_y, down_x, down_y, pad_x0, pad_x1, pad_y0, pad_y1):
    _, channel, in_h, in_w = input.shape
    input = input.reshape(-1, in_h, in_w, 1)
    _, in_h, in_w, minor = input.shape
    kernel_h, kernel_w = kernel.shape
    out = input.view(-1, in_h, 1, in_w, 1, minor)
    out = F.pad(out, [0, 0, 0, up_x - 1, 0, 0, 0, up_y - 1])
    out = out.view(-1, in_h * up_y, in_w * up_x, minor)
    out = F.pad(out, [0, 0, max(pad_x0, 0), max(pad_x1, 0), max(pad_y0, 0), max(pad_y1, 0)])
    out = out[:, max(-pad_y0, 0):out.shape[1] - max(-pad_y1, 0), max(-pad_x0, 0):out.shape[2] - max(-pad_x1, 0), :]
    out = out.permute(0, 3, 1, 2)
    out = out.reshape([-1, 1, in_h * up_y + pad_y0 + pad_y1, in_w * up_x + pad_x0 + pad_x1])
    w = torch.flip(kernel, [0, 1]).view(1, 1, kernel_h, kernel_w)
    out = F.conv2d(out, w)
    out = out.reshape(-1, minor, in_h * up_y + pad_y0 + pad_y1 - kernel_h + 1,
                      in_w * up_x + pad_x0 + pad_x1 - kernel_w + 1)
    out = out.permute(0, 2, 3, 1)
    out = out[:, ::down_y, ::down_x, :]
    out_h = (in_h * up_y + pad_y0 + pad_y1 - kernel_h) // down_y + 1
    out_w = (in_w * up_x + pad_x0 + pad_x1 - kernel_w) // down_x + 1
    return out.view(-1, channel, out_h, out_w)


#: what a user of this code gives GANSpec(fallbacks=...): each Function -> its native version, called as .apply is
FALLBACKS = {FusedLeakyReLUFunction: fused_leaky_relu_native,
             UpFirDn2d: lambda input, kernel, up, down, pad: upfirdn2d_native(input, kernel, *up, *down, *pad)}


# -- model.py -------------------------------------------------------------------------------------------------
class PixelNorm(nn.Module):
    def forward(self, input):
        return input * torch.rsqrt(torch.mean(input ** 2, dim=1, keepdim=True) + 1e-8)


def make_kernel(k):
    k = torch.tensor(k, dtype=torch.float32)
    if k.ndim == 1:
        k = k[None, :] * k[:, None]
    return k / k.sum()


class Upsample(nn.Module):
    def __init__(self, kernel, factor=2):
        super().__init__()
        self.factor = factor
        kernel = make_kernel(kernel) * (factor ** 2)
        self.register_buffer("kernel", kernel)
        p = kernel.shape[0] - factor
        self.pad = ((p + 1) // 2 + factor - 1, p // 2)

    def forward(self, input):
        return upfirdn2d(input, self.kernel, up=self.factor, down=1, pad=self.pad)


class Blur(nn.Module):
    def __init__(self, kernel, pad, upsample_factor=1):
        super().__init__()
        kernel = make_kernel(kernel)
        if upsample_factor > 1:
            kernel = kernel * (upsample_factor ** 2)
        self.register_buffer("kernel", kernel)
        self.pad = pad

    def forward(self, input):
        return upfirdn2d(input, self.kernel, pad=self.pad)


class EqualLinear(nn.Module):
    def __init__(self, in_dim, out_dim, bias=True, bias_init=0, lr_mul=1, activation=None):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim).div_(lr_mul))
        self.bias = nn.Parameter(torch.zeros(out_dim).fill_(bias_init)) if bias else None
        self.activation = activation
        self.scale = (1 / math.sqrt(in_dim)) * lr_mul
        self.lr_mul = lr_mul

    def forward(self, input):
        if self.activation:
            out = F.linear(input, self.weight * self.scale)
            return fused_leaky_relu(out, self.bias * self.lr_mul)
        return F.linear(input, self.weight * self.scale, bias=self.bias * self.lr_mul)


class ModulatedConv2d(nn.Module):
    def __init__(self, in_channel, out_channel, kernel_size, style_dim, demodulate=True, upsample=False,
                 blur_kernel=(1, 3, 3, 1)):
        super().__init__()
        self.eps = 1e-8
        self.kernel_size, self.in_channel, self.out_channel = kernel_size, in_channel, out_channel
        self.upsample = upsample
        if upsample:
            factor = 2
            p = (len(blur_kernel) - factor) - (kernel_size - 1)
            self.blur = Blur(blur_kernel, pad=((p + 1) // 2 + factor - 1, p // 2 + 1), upsample_factor=factor)
        self.scale = 1 / math.sqrt(in_channel * kernel_size ** 2)
        self.padding = kernel_size // 2
        self.weight = nn.Parameter(torch.randn(1, out_channel, in_channel, kernel_size, kernel_size))
        self.modulation = EqualLinear(style_dim, in_channel, bias_init=1)
        self.demodulate = demodulate

    def forward(self, input, style):
        batch, in_channel, height, width = input.shape
        style = self.modulation(style).view(batch, 1, in_channel, 1, 1)
        weight = self.scale * self.weight * style                            # [B, Cout, Cin, k, k]
        if self.demodulate:
            demod = torch.rsqrt(weight.pow(2).sum([2, 3, 4]) + 1e-8)
            weight = weight * demod.view(batch, self.out_channel, 1, 1, 1)
        weight = weight.view(batch * self.out_channel, in_channel, self.kernel_size, self.kernel_size)
        if self.upsample:
            input = input.view(1, batch * in_channel, height, width)
            weight = weight.view(batch, self.out_channel, in_channel, self.kernel_size, self.kernel_size)
            weight = weight.transpose(1, 2).reshape(batch * in_channel, self.out_channel, self.kernel_size,
                                                    self.kernel_size)
            out = F.conv_transpose2d(input, weight, padding=0, stride=2, groups=batch)
            _, _, height, width = out.shape
            out = out.view(batch, self.out_channel, height, width)
            out = self.blur(out)
        else:
            input = input.view(1, batch * in_channel, height, width)
            out = F.conv2d(input, weight, padding=self.padding, groups=batch)
            _, _, height, width = out.shape
            out = out.view(batch, self.out_channel, height, width)
        return out


class NoiseInjection(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, image, noise=None):
        if noise is None:
            batch, _, height, width = image.shape
            noise = image.new_empty(batch, 1, height, width).normal_()
        return image + self.weight * noise


class ConstantInput(nn.Module):
    def __init__(self, channel, size=4):
        super().__init__()
        self.input = nn.Parameter(torch.randn(1, channel, size, size))

    def forward(self, input):
        return self.input.repeat(input.shape[0], 1, 1, 1)


class FusedLeakyReLU(nn.Module):
    def __init__(self, channel, negative_slope=0.2, scale=2 ** 0.5):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channel))
        self.negative_slope, self.scale = negative_slope, scale

    def forward(self, input):
        return fused_leaky_relu(input, self.bias, self.negative_slope, self.scale)


class StyledConv(nn.Module):
    def __init__(self, in_channel, out_channel, kernel_size, style_dim, upsample=False, blur_kernel=(1, 3, 3, 1)):
        super().__init__()
        self.conv = ModulatedConv2d(in_channel, out_channel, kernel_size, style_dim, upsample=upsample,
                                    blur_kernel=blur_kernel)
        self.noise = NoiseInjection()
        self.activate = FusedLeakyReLU(out_channel)

    def forward(self, input, style, noise=None):
        return self.activate(self.noise(self.conv(input, style), noise=noise))


class ToRGB(nn.Module):
    def __init__(self, in_channel, style_dim, upsample=True, blur_kernel=(1, 3, 3, 1)):
        super().__init__()
        if upsample:
            self.upsample = Upsample(blur_kernel)
        self.conv = ModulatedConv2d(in_channel, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, input, style, skip=None):
        out = self.conv(input, style) + self.bias
        return out + self.upsample(skip) if skip is not None else out


class Generator(nn.Module):
    def __init__(self, size=SIZE, style_dim=STYLE_DIM, n_mlp=N_MLP, channels=CHANNELS, blur_kernel=(1, 3, 3, 1),
                 lr_mlp=0.01):
        super().__init__()
        self.size, self.style_dim = size, style_dim
        self.style = nn.Sequential(PixelNorm(), *[EqualLinear(style_dim, style_dim, lr_mul=lr_mlp,
                                                              activation="fused_lrelu") for _ in range(n_mlp)])
        self.channels = channels
        self.input = ConstantInput(channels[4])
        self.conv1 = StyledConv(channels[4], channels[4], 3, style_dim, blur_kernel=blur_kernel)
        self.to_rgb1 = ToRGB(channels[4], style_dim, upsample=False)
        self.log_size = int(math.log(size, 2))
        self.num_layers = (self.log_size - 2) * 2 + 1
        self.convs, self.to_rgbs, self.noises = nn.ModuleList(), nn.ModuleList(), nn.Module()
        in_channel = channels[4]
        for layer_idx in range(self.num_layers):
            res = (layer_idx + 5) // 2
            self.noises.register_buffer(f"noise_{layer_idx}", torch.randn(1, 1, 2 ** res, 2 ** res))
        for i in range(3, self.log_size + 1):
            out_channel = channels[2 ** i]
            self.convs.append(StyledConv(in_channel, out_channel, 3, style_dim, upsample=True, blur_kernel=blur_kernel))
            self.convs.append(StyledConv(out_channel, out_channel, 3, style_dim, blur_kernel=blur_kernel))
            self.to_rgbs.append(ToRGB(out_channel, style_dim))
            in_channel = out_channel
        self.n_latent = self.log_size * 2 - 2

    def mean_latent(self, n_latent):
        latent_in = torch.randn(n_latent, self.style_dim, device=self.input.input.device)
        return self.style(latent_in).mean(0, keepdim=True)

    def forward(self, styles, return_latents=False, inject_index=None, truncation=1, truncation_latent=None,
                input_is_latent=False, noise=None, randomize_noise=True):
        if not input_is_latent:
            styles = [self.style(s) for s in styles]
        if noise is None:
            noise = [None] * self.num_layers if randomize_noise else [
                getattr(self.noises, f"noise_{i}") for i in range(self.num_layers)]
        if truncation < 1:
            styles = [truncation_latent + truncation * (style - truncation_latent) for style in styles]
        if len(styles) < 2:
            inject_index = self.n_latent
            latent = styles[0].unsqueeze(1).repeat(1, inject_index, 1) if styles[0].ndim < 3 else styles[0]
        else:
            if inject_index is None:
                inject_index = random.randint(1, self.n_latent - 1)
            latent = styles[0].unsqueeze(1).repeat(1, inject_index, 1)
            latent2 = styles[1].unsqueeze(1).repeat(1, self.n_latent - inject_index, 1)
            latent = torch.cat([latent, latent2], 1)                         # [B, n_latent, style_dim]
        out = self.input(latent)
        out = self.conv1(out, latent[:, 0], noise=noise[0])
        skip = self.to_rgb1(out, latent[:, 1])
        i = 1
        for conv1, conv2, noise1, noise2, to_rgb in zip(self.convs[::2], self.convs[1::2], noise[1::2], noise[2::2],
                                                        self.to_rgbs):
            out = conv1(out, latent[:, i], noise=noise1)
            out = conv2(out, latent[:, i + 1], noise=noise2)
            skip = to_rgb(out, latent[:, i + 2], skip)
            i += 2
        return (skip, latent) if return_latents else (skip, None)


# -- what a user writes around it for edgegen -----------------------------------------------------------------
class Mapping(nn.Module):
    """GANSpec's mapping: z [B, style_dim] -> w [B, style_dim]; ``w_avg`` is the generator's mean latent."""

    def __init__(self, g: Generator, n_mean: int = 4096) -> None:
        super().__init__()
        self.style = g.style
        with torch.no_grad():
            self.register_buffer("w_avg", g.mean_latent(n_mean)[0])        # [style_dim]

    def forward(self, z):
        return self.style(z)


class Synthesis(nn.Module):
    """GANSpec's generator: w [B, style_dim] -> image [B, 3, size, size], per-layer noise drawn inside."""

    def __init__(self, g: Generator) -> None:
        super().__init__()
        self.g = g

    def forward(self, w):
        return self.g([w], input_is_latent=True)[0]


def build(seed: int = 0) -> Generator:
    """Random weights from ``seed``; the zero-initialised biases and noise strengths get N(0, 0.2^2) added."""
    torch.manual_seed(seed)
    g = Generator()
    with torch.no_grad():
        for name, p in g.named_parameters():
            if name.endswith("bias") or name.endswith("noise.weight"):
                p.add_(0.2 * torch.randn_like(p))
    return g.eval()


def spec(g: Generator | None = None, **kw):
    """GANSpec(mapping=Mapping(g), generator=Synthesis(g)); ``kw``: fallbacks, defaults, ..."""
    from edgegen import GANSpec

    g = g if g is not None else build()
    torch.manual_seed(1)   # mean_latent's z
    return GANSpec(generator=Synthesis(g).eval(), mapping=Mapping(g).eval(), latent_dim=STYLE_DIM, **kw)
