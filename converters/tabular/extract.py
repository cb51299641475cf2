"""Reading a fitted ``ctgan`` model: its network's tensors and its data transform as plain data.

What is read, and checked on the way (anything else is refused, naming it):

- CTGAN: ``_generator`` (``Residual`` blocks: Linear, BatchNorm1d, ReLU, concatenated with their input; then a
  Linear), ``_embedding_dim``, ``_batch_size``, ``_data_sampler``'s per-column category probabilities;
- TVAE: ``decoder`` (Linear + ReLU layers, a Linear, and its learned ``sigma``), ``embedding_dim``,
  ``batch_size``;
- both: the ``DataTransformer``'s columns in order: rdt ``ClusterBasedNormalizer`` (the Bayesian GMM's valid
  components' means and standard deviations) or ``OneHotEncoder`` (its categories), and the training data's
  dtypes.  Options of rdt that change the inverse (learned rounding, min/max clipping, modelled nulls in a
  continuous column) are refused: ctgan does not set them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from edgegen.errors import ConversionError, UnsupportedModelError
from edgegen.runtimes.tabular.transform import DTYPES


@dataclass
class Network:
    """A tabular model as data: ``kind``, the manifest's ``sampler`` section, and the network's tensors."""

    kind: str                                           # ctgan | tvae
    sampler: dict[str, Any]
    tensors: dict[str, torch.Tensor]                    # residual.{i}.{fc,bn}.{weight,bias} / linear.{i}.{weight,bias}
    bn_eps: list[float] = field(default_factory=list)   # ctgan: each BatchNorm's eps
    reference: Any = None                               # the fitted ctgan object, when there is one

    @property
    def layers(self) -> int:
        prefix = "residual" if self.kind == "ctgan" else "linear"
        return len({k.split(".")[1] for k in self.tensors if k.startswith(prefix + ".")})


def extract(fitted: Any) -> Network:
    kind = "ctgan" if type(fitted).__name__.startswith("CTGAN") else "tvae"
    transformer = getattr(fitted, "_transformer" if kind == "ctgan" else "transformer", None)
    net = getattr(fitted, "_generator" if kind == "ctgan" else "decoder", None)
    if transformer is None or net is None:
        raise ConversionError(f"this {type(fitted).__name__} has not been fitted: call .fit(data, discrete_columns) "
                              "first")
    columns = _columns(transformer)
    embedding = int(getattr(fitted, "_embedding_dim" if kind == "ctgan" else "embedding_dim"))
    batch = int(getattr(fitted, "_batch_size" if kind == "ctgan" else "batch_size"))
    sampler: dict[str, Any] = {"model": kind, "embedding_dim": embedding, "columns": columns, "block_rows": batch}
    data_dim = sum(1 + len(c["means"]) if c["kind"] == "continuous" else len(c["categories"]) for c in columns)
    if int(getattr(transformer, "output_dimensions", data_dim)) != data_dim:
        raise ConversionError(f"the data transformer declares {transformer.output_dimensions} matrix columns but its "
                              f"columns add up to {data_dim}; this ctgan version is not one edgegen reads")
    if kind == "ctgan":
        tensors, eps = _ctgan_generator(net)
        sampler["condition_probabilities"] = _condition_probabilities(fitted._data_sampler, columns)
        if batch < 2:
            raise UnsupportedModelError("ctgan's generator normalizes over its batch; a batch_size under 2 cannot run")
    else:
        tensors, eps = _tvae_decoder(net), []
        sigma = net.sigma.detach().float().cpu()
        starts = np.cumsum([0] + [1 + len(c["means"]) if c["kind"] == "continuous" else len(c["categories"])
                                  for c in columns])[:-1]
        sampler["sigmas"] = [float(sigma[s]) for c, s in zip(columns, starts) if c["kind"] == "continuous"]
    width = next(v for k, v in reversed(tensors.items()) if k.endswith("weight")).shape[0]
    if width != data_dim:
        raise ConversionError(f"the network writes {width} values per row but the data transform reads {data_dim}")
    return Network(kind, sampler, tensors, eps, fitted)


def _columns(transformer: Any) -> list[dict[str, Any]]:
    infos = getattr(transformer, "_column_transform_info_list", None)
    raw = getattr(transformer, "_column_raw_dtypes", None)
    if infos is None or raw is None:
        raise ConversionError("ctgan's DataTransformer has no _column_transform_info_list / _column_raw_dtypes; "
                              "this ctgan version is not one edgegen reads (it reads ctgan 0.10 to 0.12)")
    columns = []
    for info in infos:
        name = info.column_name
        if not isinstance(name, str):
            raise UnsupportedModelError(f"column name {name!r} is not a string; fit on a DataFrame with string "
                                        "column names")
        dtype = str(raw[name])
        if dtype not in DTYPES:
            raise UnsupportedModelError(f"column {name!r} has dtype {dtype}, which edgegen does not write back "
                                        f"(it writes {', '.join(DTYPES)}); convert it to numbers or strings first")
        if info.column_type == "continuous":
            columns.append({"name": name, "kind": "continuous", "dtype": dtype, **_gmm(name, info.transform, dtype)})
        elif info.column_type == "discrete":
            dummies = getattr(info.transform, "dummies", None)
            if dummies is None or len(dummies) != info.output_dimensions:
                raise ConversionError(f"column {name!r}: its OneHotEncoder has no categories edgegen can read")
            columns.append({"name": name, "kind": "discrete", "dtype": dtype,
                            "categories": [_json_value(name, v) for v in dummies]})
        else:
            raise UnsupportedModelError(f"column {name!r}: column type {info.column_type!r} is not one edgegen knows")
    return columns


def _gmm(name: str, gm: Any, dtype: str) -> dict[str, list[float]]:
    """The valid components of rdt's ClusterBasedNormalizer, as its reverse transform reads them."""
    if getattr(gm, "learn_rounding_scheme", False) or getattr(gm, "enforce_min_max_values", False):
        raise UnsupportedModelError(f"column {name!r}: rdt's learn_rounding_scheme / enforce_min_max_values are set; "
                                    "ctgan does not set them and edgegen does not reproduce them")
    nulls = getattr(gm, "null_transformer", None)
    if nulls is not None and nulls.models_missing_values():
        raise UnsupportedModelError(f"column {name!r} models missing values, which ctgan refuses for continuous "
                                    "columns; drop or fill its nulls and refit")
    if getattr(gm, "STD_MULTIPLIER", 4) != 4:
        raise ConversionError(f"column {name!r}: rdt's STD_MULTIPLIER is {gm.STD_MULTIPLIER}, edgegen reads 4")
    fitted = getattr(gm, "_dtype", None)
    if fitted is not None and np.issubdtype(np.dtype(fitted), np.integer) != dtype.startswith(("int", "uint")):
        raise ConversionError(f"column {name!r}: the normalizer saw {fitted} but the table's dtype is {dtype}")
    valid = np.asarray(gm.valid_component_indicator, dtype=bool)
    bgm = gm._bgm_transformer
    means = np.asarray(bgm.means_, dtype=np.float64).reshape(-1)[valid]
    stds = np.sqrt(np.asarray(bgm.covariances_, dtype=np.float64)).reshape(-1)[valid]
    if not len(means) or not np.all(np.isfinite(means)) or not np.all(np.isfinite(stds) & (stds > 0)):
        raise ConversionError(f"column {name!r}: its Gaussian mixture has no usable components")
    return {"means": [float(m) for m in means], "stds": [float(s) for s in stds]}


def _json_value(column: str, value: Any) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, (str, bool, int)) or (isinstance(value, float) and math.isfinite(value)):
        return value
    raise UnsupportedModelError(f"column {column!r}: category {value!r} ({type(value).__name__}) is not a string, "
                                "number or boolean; convert the column's values first")


def _condition_probabilities(data_sampler: Any, columns: list[dict[str, Any]]) -> list[list[float]]:
    probs = np.asarray(data_sampler._discrete_column_category_prob, dtype=np.float64)
    discrete = [c for c in columns if c["kind"] == "discrete"]
    if probs.shape[0] != len(discrete):
        raise ConversionError("ctgan's data sampler and data transformer disagree on the discrete columns")
    return [[float(p) for p in probs[i, :len(c["categories"])]] for i, c in enumerate(discrete)]


def _ctgan_generator(generator: torch.nn.Module) -> tuple[dict[str, torch.Tensor], list[float]]:
    """``seq`` = Residual blocks (fc, bn, relu) and a final Linear."""
    layers = list(getattr(generator, "seq", []))
    tensors, eps = {}, []
    for i, layer in enumerate(layers[:-1]):
        fc, bn = getattr(layer, "fc", None), getattr(layer, "bn", None)
        if not isinstance(fc, torch.nn.Linear) or not isinstance(bn, torch.nn.BatchNorm1d) or not bn.affine:
            raise UnsupportedModelError(f"generator layer {i} is a {type(layer).__name__}, not ctgan's Residual "
                                        "(Linear, BatchNorm1d, ReLU); edgegen reads ctgan's own Generator")
        tensors |= {f"residual.{i}.fc.weight": fc.weight, f"residual.{i}.fc.bias": fc.bias,
                    f"residual.{i}.bn.weight": bn.weight, f"residual.{i}.bn.bias": bn.bias}
        eps.append(float(bn.eps))
    if not layers or not isinstance(layers[-1], torch.nn.Linear):
        raise UnsupportedModelError("the generator does not end in a Linear layer; edgegen reads ctgan's Generator")
    tensors |= {"output.weight": layers[-1].weight, "output.bias": layers[-1].bias}
    return {k: v.detach().float().cpu().clone() for k, v in tensors.items()}, eps


def _tvae_decoder(decoder: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``seq`` = (Linear, ReLU) pairs and a final Linear."""
    layers = list(getattr(decoder, "seq", []))
    linears = [m for m in layers if isinstance(m, torch.nn.Linear)]
    others = [m for m in layers if not isinstance(m, (torch.nn.Linear, torch.nn.ReLU))]
    if not linears or others or not isinstance(layers[-1], torch.nn.Linear) or \
            any(isinstance(a, torch.nn.Linear) == isinstance(b, torch.nn.Linear) for a, b in zip(layers, layers[1:])):
        raise UnsupportedModelError("the decoder is not ctgan's TVAE Decoder (Linear, ReLU, ..., Linear)")
    tensors = {}
    for i, m in enumerate(linears):
        tensors |= {f"linear.{i}.weight": m.weight, f"linear.{i}.bias": m.bias}
    return {k: v.detach().float().cpu().clone() for k, v in tensors.items()}
