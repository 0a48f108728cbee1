"""Pretrained models from a local Hugging Face directory, mapped into pathprob's own Transformer.

A directory holds ``config.json``, the weights as ``model.safetensors`` (or shards listed in
``model.safetensors.index.json``) and ``tokenizer.json``. Nothing is downloaded: the files are the
user's own copy. Weights are read with ``safetensors`` into numpy (no torch) and mapped, tensor by
tensor, into the parameters of ``pathprob.models.transformer.Transformer`` (one model class, so
every engine runs on the result unchanged), by the recipes of the architecture's registered
``Family`` (``pathprob.models.hf_families``).

Any refusal is one line naming what is wrong: a missing file or tensor, an unknown architecture, a
tensor whose shape differs from what ``config.json`` implies, a config option not implemented.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_dtypes  # noqa: F401 (registers bfloat16 with numpy, so safetensors can hand back bf16 tensors)
import numpy as np
from flax import nnx

from pathprob.config import ModelConfig
from pathprob.errors import PathprobError
from pathprob.models.hf_families import ARCHITECTURES, Family, Fields, PretrainedError, Take
from pathprob.models.transformer import Transformer, TransformerLM

CONFIG, WEIGHTS, INDEX, TOKENIZER = "config.json", "model.safetensors", "model.safetensors.index.json", "tokenizer.json"
DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class Pretrained:
    """A directory's config.json, read and mapped (no weights read yet).

    ``eos_id``/``bos_id`` come from ``eos_token_id``/``bos_token_id``; where config.json gives a
    list (Llama 3 lists several EOS ids), the first is used and ``notes`` says so.
    """

    directory: Path
    architecture: str
    family: Family
    config: ModelConfig
    eos_id: int
    bos_id: int | None
    notes: tuple[str, ...] = ()


# --- reading a directory --------------------------------------------------------------------------------


def read_pretrained(directory: str | Path) -> Pretrained:
    """The directory's config.json, mapped to a family and a (float32) ModelConfig; no weights are read."""
    directory = Path(directory)
    if not directory.is_dir():
        raise PretrainedError(f"no such directory: {directory} (hf:DIR needs a local Hugging Face model directory)")
    where = directory / CONFIG
    if not where.is_file():
        raise PretrainedError(f"{directory} has no {CONFIG}")
    try:
        fields = json.loads(where.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise PretrainedError(f"{where} is not readable JSON ({err})") from None
    if not isinstance(fields, dict):
        raise PretrainedError(f"{where} is not a JSON object")
    architectures = fields.get("architectures") or []
    known = [a for a in architectures if a in ARCHITECTURES]
    if not known:
        named = ", ".join(map(str, architectures)) or "(none given)"
        raise PretrainedError(f"{where}: unsupported architecture {named} (supported: {', '.join(ARCHITECTURES)})")
    f = Fields(fields, where)
    family = ARCHITECTURES[known[0]]
    try:
        config = family.config(f)
    except PretrainedError:
        raise
    except PathprobError as err:  # a ModelConfig field out of range: name the file it came from
        raise PretrainedError(f"{where} maps to an invalid model ({err})") from None
    except (TypeError, ValueError) as err:
        raise PretrainedError(f"{where} has a field of the wrong type ({err})") from None
    eos_id, bos_id = f.special("eos_token_id"), f.special("bos_token_id")
    if eos_id is None:
        raise PretrainedError(f"{where} has no eos_token_id: pathprob's engines end every path at EOS")
    for name, value in (("eos_token_id", eos_id), ("bos_token_id", bos_id)):
        if value is not None and not 0 <= value < config.vocab_size:
            raise PretrainedError(f"{where}: {name} {value} is outside the vocabulary of size {config.vocab_size}")
    return Pretrained(directory, known[0], family, config, eos_id, bos_id, tuple(f.notes))


def _weight_files(directory: Path) -> list[Path]:
    index = directory / INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as err:
            raise PretrainedError(f"{index} is not a readable safetensors index "
                                  f"({type(err).__name__}: {err})") from None
        files = [directory / name for name in dict.fromkeys(weight_map.values())]
    elif (directory / WEIGHTS).is_file():
        files = [directory / WEIGHTS]
    else:
        raise PretrainedError(f"{directory} has no {WEIGHTS} (nor {INDEX} for sharded weights)")
    for file in files:
        if not file.is_file():
            raise PretrainedError(f"{directory} has no {file.name} (listed in {INDEX})")
    return files


class _Tensors:
    """The stored tensors of a directory by (prefix-stripped) name: shapes from the headers, data on demand."""

    def __init__(self, pretrained: Pretrained):
        from safetensors import SafetensorError, safe_open

        self.files = _weight_files(pretrained.directory)
        self.where: dict[str, tuple[Path, str]] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        self._open, self._handles = safe_open, {}
        for file in self.files:
            try:
                with safe_open(file, framework="numpy") as handle:
                    for stored in handle.keys():
                        name = _strip(stored, pretrained.family.strip)
                        self.where[name] = (file, stored)
                        self.shapes[name] = tuple(handle.get_slice(stored).get_shape())
            except (SafetensorError, OSError) as err:
                raise PretrainedError(f"{file} is not a readable safetensors file ({err})") from None

    def read(self, name: str) -> np.ndarray:
        file, stored = self.where[name]
        if file not in self._handles:
            self._handles[file] = self._open(file, framework="numpy")
        return self._handles[file].get_tensor(stored)


def _strip(name: str, prefixes: tuple[str, ...]) -> str:
    for prefix in prefixes:
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


def _plan(pretrained: Pretrained, tensors: _Tensors) -> dict[str, Take]:
    """The recipe of every parameter, checked against the stored tensors' names and shapes."""
    plan = pretrained.family.tensors(pretrained.config)
    used = {name for take in plan.values() for name, _ in take.sources}
    where = pretrained.directory
    for take in plan.values():
        for name, shape in take.sources:
            if name not in tensors.shapes:
                raise PretrainedError(f"{where} has no tensor {name!r} (the {pretrained.architecture} layout "
                                      f"of {CONFIG} needs it)")
            if tensors.shapes[name] != shape:
                raise PretrainedError(f"tensor {name!r} in {where} has shape {tensors.shapes[name]}, but {CONFIG} "
                                      f"implies {shape}")
    ignore = re.compile(pretrained.family.ignore)
    tied_head = {"lm_head.weight", "embed_out.weight"} if pretrained.config.tie_embeddings else set()
    extra = sorted(n for n in tensors.shapes if n not in used and n not in tied_head and not ignore.fullmatch(n))
    if extra:
        more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
        raise PretrainedError(f"{where} holds tensor {extra[0]!r}{more}, which the {pretrained.architecture} mapping "
                              "does not use: a variant pathprob does not support")
    return plan


def _abstract(cfg: ModelConfig) -> tuple[nnx.GraphDef, nnx.State]:
    return nnx.split(nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0))))


def _param_name(path: tuple) -> str:
    name = jax.tree_util.keystr(path, simple=True, separator="/")
    return name.removesuffix("/value")


def with_dtype(cfg: ModelConfig, dtype: str | None) -> ModelConfig:
    """``cfg`` with compute and parameter dtype ``dtype`` (None: unchanged)."""
    if dtype is None:
        return cfg
    if dtype not in DTYPES:
        raise PathprobError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    return dataclasses.replace(cfg, dtype=dtype, param_dtype=dtype)


def load_transformer(directory: str | Path, *, dtype: str | None = None) -> tuple[Pretrained, nnx.GraphDef, nnx.State]:
    """The directory's mapping, and its Transformer's graphdef and parameters (``dtype``: default float32)."""
    pretrained = read_pretrained(directory)
    cfg = with_dtype(pretrained.config, dtype or "float32")
    pretrained = dataclasses.replace(pretrained, config=cfg)
    tensors = _Tensors(pretrained)
    plan = _plan(pretrained, tensors)
    graphdef, abstract = _abstract(cfg)

    def leaf(path, abstract_leaf):
        name = _param_name(path)
        take = plan[name]
        # Transposes and concatenations are exact in the stored dtype; one rounding at most, to the target dtype.
        array = np.asarray(take.build(*(tensors.read(source) for source, _ in take.sources)), abstract_leaf.dtype)
        if array.shape != tuple(abstract_leaf.shape):  # a recipe bug, not the user's: say so plainly
            raise AssertionError(f"{name}: built {array.shape}, the Transformer has {abstract_leaf.shape}")
        return jnp.asarray(array)

    missing = sorted(set(map(_param_name, (p for p, _ in jax.tree_util.tree_flatten_with_path(abstract)[0])))
                     - set(plan))
    if missing:
        raise AssertionError(f"the {pretrained.architecture} mapping lacks parameters {missing}")
    params = jax.tree_util.tree_map_with_path(leaf, abstract)
    return pretrained, graphdef, params


def open_pretrained(directory: str | Path, *, dtype: str | None = None) -> TransformerLM:
    """The model of a local Hugging Face directory as a LanguageModel (weights as ``dtype``, default float32).

    The tokenizer is ``tokenizer.json`` (``pathprob.data.hf_tokenizer``), with BOS/EOS from config.json;
    whether a text prompt gets BOS follows the file's post-processor template.
    """
    directory = Path(directory)
    if not (directory / TOKENIZER).is_file() and directory.is_dir():
        raise PretrainedError(f"{directory} has no {TOKENIZER}")
    pretrained, graphdef, params = load_transformer(directory, dtype=dtype)
    from pathprob.data.hf_tokenizer import HFTokenizer  # the tokenizers library is needed only here

    # A model may have more rows than the tokenizer has tokens (Pythia pads to a multiple of 128): the
    # tokenizer then covers the model's vocabulary, those ids with no bytes (no text decodes to them), so
    # token automata are as wide as the model's log-probabilities. More tokens than rows is refused.
    tokenizer = HFTokenizer.from_file(directory / TOKENIZER, bos_id=pretrained.bos_id, eos_id=pretrained.eos_id,
                                      vocab_size=pretrained.config.vocab_size)
    return TransformerLM(params=params, graphdef=graphdef, config=pretrained.config, tokenizer=tokenizer)


def describe_pretrained(directory: str | Path, *, dtype: str | None = None) -> dict:
    """A JSON-able summary from config.json and the safetensors headers (no weights are read)."""
    pretrained = read_pretrained(directory)
    cfg = with_dtype(pretrained.config, dtype or "float32")
    _plan(dataclasses.replace(pretrained, config=cfg), _Tensors(pretrained))
    _, abstract = _abstract(cfg)
    notes = list(pretrained.notes)
    if not (pretrained.directory / TOKENIZER).is_file():
        notes.append(f"no {TOKENIZER}: the model cannot be opened until it is there")
    leaves = jax.tree.leaves(abstract)
    count = sum(math.prod(leaf.shape) for leaf in leaves)
    weight_bytes = sum(math.prod(leaf.shape) * np.dtype(leaf.dtype).itemsize for leaf in leaves)
    return {
        "kind": "pretrained (Hugging Face directory)", "family": pretrained.architecture,
        "vocab_size": cfg.vocab_size, "max_len": cfg.max_len, "parameters": int(count), "dtype": cfg.param_dtype,
        "weights_bytes": int(weight_bytes),
        "weights_memory": f"{_size(weight_bytes)} for the weights only (the prompt and path KV caches and the "
                          "activations come on top)",
        "eos_id": pretrained.eos_id, "bos_id": pretrained.bos_id, "notes": notes,
        "model_config": cfg.to_dict(),
    }


def _size(n_bytes: int) -> str:
    """A byte count in binary units: 512 B, 87.0 KiB, 474.6 MiB, 4.60 GiB."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:.{2 if unit == 'GiB' else 1}f} {unit}"
    return f"{n_bytes} B"
