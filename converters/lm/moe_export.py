"""Mixture-of-experts blocks made exportable: the router's top-k without a data-dependent Python loop.

transformers' sparse MoE blocks (Mixtral, Qwen2-MoE) loop over ``expert_mask.sum(...).nonzero()``, the experts
some token chose (DeepSeek-V2 over ``tokens_per_expert``, Phi-MoE skipping experts with no token): a Python loop over a tensor's values, which torch.export cannot follow ("Could not guard on
data-dependent expression").  During the export each such block's forward is swapped for the same computation
looping over *every* expert index (a loop fixed by the config, unrolled in the graph), each expert still
computing only the tokens routed to it (``torch.where`` on its column of the one-hot mask: a data-dependent
*size*, which ONNX carries as a dynamic dimension).  That is Optimum's workaround for Qwen3-MoE
(``Qwen3MoeModelPatcher``); the arithmetic is transformers' own, so the tokens are identical.

onnxruntime 1.32's CPU provider has a ``com.microsoft.MoE`` kernel (a node with silu experts runs there);
rewriting these unrolled blocks into it (with gated fc3 weights, and a shared expert beside it) is not done
yet: the plain graph computes the same and runs on every provider.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F


def _routed_experts(block: Any, hidden: torch.Tensor, normalize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """hidden [N, H] -> (the weighted sum of each token's top-k experts [N, H], router logits [N, E])."""
    router_logits = block.gate(hidden)                                              # [N, E]
    weights = F.softmax(router_logits, dim=1, dtype=torch.float)                    # [N, E]
    weights, selected = torch.topk(weights, block.top_k, dim=-1)                    # [N, k] each
    if normalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    weights = weights.to(hidden.dtype)
    out = torch.zeros_like(hidden)                                                  # [N, H]
    mask = F.one_hot(selected, num_classes=block.num_experts).permute(2, 1, 0)      # [E, k, N]
    for e in range(block.num_experts):                                              # fixed by the config
        slot, token = torch.where(mask[e])                                          # [n_e] each
        expert_out = block.experts[e](hidden[token]) * weights[token, slot, None]   # [n_e, H]
        out = out.index_add(0, token, expert_out.to(hidden.dtype))
    return out, router_logits


def _mixtral_forward(self: Any, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    b, t, h = hidden_states.shape
    out, logits = _routed_experts(self, hidden_states.reshape(-1, h), normalize=True)
    return out.reshape(b, t, h), logits


def _qwen2_moe_forward(self: Any, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    b, t, h = hidden_states.shape
    x = hidden_states.reshape(-1, h)                                                # [N, H]
    out, logits = _routed_experts(self, x, normalize=self.norm_topk_prob)
    shared = F.sigmoid(self.shared_expert_gate(x)) * self.shared_expert(x)          # [N, H]
    return (out + shared).reshape(b, t, h), logits


def _deepseek_v2_moe(self: Any, hidden: torch.Tensor, topk_ids: torch.Tensor,
                     topk_weight: torch.Tensor) -> torch.Tensor:
    """DeepseekV2MoE.moe: hidden [N, H], the gate's topk_ids / topk_weight [N, k] -> [N, H]."""
    out = torch.zeros_like(hidden)                                                  # [N, H]
    for e, expert in enumerate(self.experts):                                       # fixed by the config
        token, slot = torch.where(topk_ids == e)                                    # [n_e] each
        weighted = expert(hidden[token]).type(topk_weight.dtype) * topk_weight[token, slot, None]   # [n_e, H]
        out = out.index_add(0, token, weighted.type(hidden.dtype))
    return out


def _phimoe_forward(self: Any, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """PhimoeSparseMoeBlock (eval): sparsemixer's top-2 routing, then every expert on its tokens."""
    from transformers.models.phimoe.modeling_phimoe import sparsemixer

    b, t, h = hidden_states.shape
    x = hidden_states.reshape(-1, h)                                                # [N, H]
    router_logits = self.gate(x)                                                    # [N, E]
    weights, selected = sparsemixer(router_logits, jitter_eps=self.router_jitter_noise, training=False)
    out = torch.zeros_like(x)
    mask = F.one_hot(selected, num_classes=self.num_experts).permute(2, 1, 0)      # [E, k, N]
    for e in range(self.num_experts):
        slot, token = torch.where(mask[e])                                          # [n_e] each
        out = out.index_add(0, token, (self.experts[e](x[token]) * weights[token, slot, None]).to(x.dtype))
    return out.reshape(b, t, h), router_logits


#: (module path, class name, method replaced, its exportable version)
_BLOCKS = (
    ("transformers.models.mixtral.modeling_mixtral", "MixtralSparseMoeBlock", "forward", _mixtral_forward),
    ("transformers.models.qwen2_moe.modeling_qwen2_moe", "Qwen2MoeSparseMoeBlock", "forward", _qwen2_moe_forward),
    ("transformers.models.phimoe.modeling_phimoe", "PhimoeSparseMoeBlock", "forward", _phimoe_forward),
    ("transformers.models.deepseek_v2.modeling_deepseek_v2", "DeepseekV2MoE", "moe", _deepseek_v2_moe),
)


def _blocks() -> dict[type, tuple[str, Any]]:
    """MoE block class -> (method, its exportable version), for the classes the installed transformers has."""
    import importlib

    table: dict[type, tuple[str, Any]] = {}
    for module, name, method, function in _BLOCKS:
        try:
            table[getattr(importlib.import_module(module), name)] = (method, function)
        except (ImportError, AttributeError):
            continue
    return table


@contextmanager
def exportable_experts(model: torch.nn.Module) -> Iterator[int]:
    """Within the block, every known MoE block of ``model`` runs the loop-free-router version; yields how many."""
    table = _blocks()
    patched = [(m, table[type(m)][0]) for m in model.modules() if type(m) in table]
    for module, method in patched:
        setattr(module, method, table[type(module)][1].__get__(module))
    try:
        yield len(patched)
    finally:
        for module, method in patched:
            delattr(module, method)                             # the class's own method again
