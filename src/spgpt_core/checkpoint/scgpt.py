"""Import released scGPT-human and scGPT-spatial checkpoint directories (reference facts §3).

The key map is explicit (``KEY_RULES``): every tensor of the file must be consumed by a rule or be
in ``DROPPED_PREFIXES``, and every weight of the spgpt network must come from the file or be one
of the documented new modules. Anything else is an error naming the tensors, never a silent
random initialisation (the reference loader filters by name and shape silently, which leaves the
attention layers random when its flash-attention flag is off).

New modules and how they are initialised (continual pretraining starts from these):

* ``modality_embedding``: N(0, 0.02) (neither checkpoint has one);
* decoder inputs grow from d to d + d_modality (Eq. 5, 6): the extra input columns of every
  expert's first layer and of the gate, and the extra output rows of the GEPS ``W``, are zero, so
  the imported decoders compute exactly what they computed before;
* scGPT-human has one expression decoder (``decoder.fc``): all four experts start as copies of it
  plus N(0, 1e-3) noise on their last layer (to break symmetry); the gate starts at zero
  (uniform routing);
* scGPT-human has one MVC head: GEPS-intra takes it; GEPS-inter starts as a copy of it;
* scGPT-spatial's ``mvc_decoder`` / ``impute_mvc_decoder`` map to GEPS-intra / GEPS-inter.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from ..errors import CheckpointError
from ..model import SpGPTConfig, SpGPTModel
from ..pp.tokenize import GeneStats
from ..pp.vocab import GeneVocab

# (pattern on the scGPT key, spgpt key template)
KEY_RULES: list[tuple[str, str]] = [
    (r"encoder\.embedding\.weight", "gene_encoder.embedding.weight"),
    (r"encoder\.enc_norm\.(weight|bias)", r"gene_encoder.norm.\1"),
    (r"value_encoder\.(linear1|linear2|norm)\.(weight|bias)", r"value_encoder.\1.\2"),
    (r"flag_encoder\.weight", "flag_embedding.weight"),
    (r"transformer_encoder\.layers\.(\d+)\.self_attn\.(?:_impl\.)?Wqkv\.(weight|bias)", r"layers.\1.attn.qkv.\2"),
    (r"transformer_encoder\.layers\.(\d+)\.self_attn\.in_proj_(weight|bias)", r"layers.\1.attn.qkv.\2"),
    (r"transformer_encoder\.layers\.(\d+)\.self_attn\.(?:_impl\.)?out_proj\.(weight|bias)", r"layers.\1.attn.out_proj.\2"),
    (r"transformer_encoder\.layers\.(\d+)\.(linear1|linear2|norm1|norm2)\.(weight|bias)", r"layers.\1.\2.\3"),
    (r"decoder\.moe\.experts\.(\d+)\.fc\.(0|2|4)\.(weight|bias)", r"moe_decoder.experts.\1.fc.\2.\3"),
    (r"decoder\.moe\.gate\.gate\.(weight|bias)", r"moe_decoder.gate.\1"),
    (r"mvc_decoder\.(gene2query\.weight|gene2query\.bias|W\.weight)", r"geps_intra.\1"),
    (r"impute_mvc_decoder\.(gene2query\.weight|gene2query\.bias|W\.weight)", r"geps_inter.\1"),
]
# scGPT-human's single expression decoder: copied into every expert
SINGLE_DECODER = re.compile(r"decoder\.fc\.(0|2|4)\.(weight|bias)")
# tensors of released checkpoints that scGPT-spatial does not use
DROPPED_PREFIXES = ("cls_decoder.",)


def _strip(key: str) -> str:
    return key[len("module."):] if key.startswith("module.") else key


def config_from_args(args: dict, vocab_size: int, vocab: GeneVocab) -> SpGPTConfig:
    """Build an SpGPTConfig from a released ``args.json`` (fields read by the reference embed_data)."""
    try:
        d_model = int(args["embsize"])
        return SpGPTConfig(
            vocab_size=vocab_size, d_model=d_model, n_layers=int(args["nlayers"]), n_heads=int(args["nheads"]),
            d_ffn=int(args["d_hid"]), dropout=float(args.get("dropout", 0.2)),
            pad_token_id=vocab.pad_id, cls_token_id=vocab.cls_id, pad_value=float(args.get("pad_value", -2)),
            mask_value=float(args.get("mask_value", -1)), n_bins=int(args.get("n_bins", 51)),
            max_seq_len=int(args.get("max_seq_len", 1200)), d_modality=d_model,
        )
    except KeyError as e:
        raise CheckpointError(f"args.json lacks {e}; a scGPT args.json has embsize, nlayers, nheads, d_hid") from e


def convert_state_dict(state: dict[str, torch.Tensor], cfg: SpGPTConfig, seed: int = 0) -> tuple[dict, dict]:
    """Map a scGPT state dict onto a fresh spgpt network. Returns (state dict, report)."""
    torch.manual_seed(seed)
    fresh = SpGPTModel(cfg)
    with torch.no_grad():
        for e in fresh.moe_decoder.experts:  # widened first layers start at zero on the modality columns
            e.fc[0].weight[:, cfg.d_model:] = 0
        fresh.moe_decoder.gate.weight.zero_()
        fresh.moe_decoder.gate.bias.zero_()
    out = {k: v.clone() for k, v in fresh.state_dict().items()}
    filled: set[str] = set()
    unknown, dropped = [], []
    single_decoder: dict[str, torch.Tensor] = {}

    for raw_key, tensor in state.items():
        key = _strip(raw_key)
        if key.startswith(DROPPED_PREFIXES):
            dropped.append(key)
            continue
        m = SINGLE_DECODER.fullmatch(key)
        if m:
            single_decoder[f"fc.{m.group(1)}.{m.group(2)}"] = tensor
            continue
        for pattern, template in KEY_RULES:
            if re.fullmatch(pattern, key):
                target = re.sub(pattern, template, key)
                if target not in out:
                    raise CheckpointError(f"checkpoint tensor {raw_key} maps to {target}, which this model "
                                          f"(n_layers={cfg.n_layers}) does not have; args.json and weights disagree")
                out[target] = _fit(tensor, out[target], raw_key)
                filled.add(target)
                break
        else:
            unknown.append(raw_key)
    if unknown:
        raise CheckpointError(f"unexpected tensors in the checkpoint: {_abbrev(unknown)}. spgpt knows the "
                              "scGPT-human and scGPT-spatial layouts; this file uses options it does not support")

    gen = torch.Generator().manual_seed(seed)
    if single_decoder:  # scGPT-human: experts from the single decoder
        for e in range(cfg.n_experts):
            for name, t in single_decoder.items():
                target = f"moe_decoder.experts.{e}.{name}"
                val = _fit(t, out[target], f"decoder.{name}")
                if name.startswith("fc.4."):
                    val = val + 1e-3 * torch.randn(val.shape, generator=gen)
                out[target] = val
                filled.add(target)
        filled |= {"moe_decoder.gate.weight", "moe_decoder.gate.bias"}  # zero gate = uniform routing
    if not any(k.startswith("geps_inter.") for k in filled) and any(k.startswith("geps_intra.") for k in filled):
        for k in [k for k in filled if k.startswith("geps_intra.")]:
            out[k.replace("geps_intra.", "geps_inter.")] = out[k].clone()
            filled.add(k.replace("geps_intra.", "geps_inter."))

    new_modules = {"modality_embedding.weight"}
    missing = sorted(k for k in out if k not in filled and k not in new_modules)
    if missing:
        raise CheckpointError(f"the checkpoint lacks weights {_abbrev(missing)}; it is incomplete (a truncated or "
                              "edited best_model.pt?) and loading it would leave them random")
    report = {"n_tensors_loaded": len(state) - len(dropped), "dropped": dropped,
              "layout": "scgpt-human" if single_decoder else "scgpt-spatial"}
    return out, report


def _fit(src: torch.Tensor, dst: torch.Tensor, name: str) -> torch.Tensor:
    """Copy ``src`` into the zero-initialised widened shape of ``dst`` (modality columns / rows)."""
    src = src.detach().to(dst.dtype)
    if src.shape == dst.shape:
        return src.clone()
    if src.dim() == dst.dim() and all(s <= d for s, d in zip(src.shape, dst.shape)) and src.dim() == 2:
        out = torch.zeros_like(dst)
        out[: src.shape[0], : src.shape[1]] = src
        return out
    raise CheckpointError(f"checkpoint tensor {name} has shape {tuple(src.shape)}, expected {tuple(dst.shape)}; "
                          "args.json does not describe these weights")


def _abbrev(items, n=6):
    items = list(items)
    return ", ".join(items[:n]) + (f" (+{len(items) - n} more)" if len(items) > n else "")


def read_scgpt_dir(path: Path) -> tuple[SpGPTModel, GeneVocab, GeneStats | None, dict]:
    """Read ``best_model.pt`` + ``args.json`` + ``vocab.json`` [+ ``all_dict_mean_std.csv``].

    Returns the parts of an :class:`~spgpt_core.checkpoint.pretrained.SpGPT` (network, vocabulary, gene
    statistics, metadata); ``SpGPT.from_pretrained`` assembles them, so this module does not
    depend on ``pretrained``."""
    path = Path(path)
    missing = [f for f in ("best_model.pt", "args.json", "vocab.json") if not (path / f).exists()]
    if missing:
        raise CheckpointError(f"scGPT directory {path} is missing {', '.join(missing)}; a released scGPT model "
                              "folder holds best_model.pt, args.json and vocab.json (and all_dict_mean_std.csv for "
                              "scGPT-spatial)")
    try:
        args = json.loads((path / "args.json").read_text())
    except ValueError as e:
        raise CheckpointError(f"{path / 'args.json'} is not valid JSON: {e}") from e
    vocab = GeneVocab.from_file(path / "vocab.json")
    try:
        state = torch.load(path / "best_model.pt", map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - corrupt pickle / zip
        raise CheckpointError(f"cannot read {path / 'best_model.pt'}: {e}. The file is corrupt or not a state dict") from e
    if isinstance(state, dict) and "model_state_dict" in state and isinstance(state["model_state_dict"], dict):
        state = state["model_state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path / 'best_model.pt'} is not a plain state dict of tensors")
    emb = next((v for k, v in state.items() if _strip(k) == "encoder.embedding.weight"), None)
    if emb is None:
        raise CheckpointError(f"{path / 'best_model.pt'} has no encoder.embedding.weight; not a scGPT checkpoint")
    if emb.shape[0] != len(vocab):
        raise CheckpointError(f"mismatched vocabulary: vocab.json has {len(vocab)} tokens (specials included) but "
                              f"the gene embedding has {emb.shape[0]} rows; use the vocab.json released with the weights")
    cfg = config_from_args(args, len(vocab), vocab)
    converted, report = convert_state_dict(state, cfg)
    module = SpGPTModel(cfg)
    module.load_state_dict(converted, strict=True)
    stats_file = path / "all_dict_mean_std.csv"
    stats = GeneStats.load(stats_file, cfg.vocab_size) if stats_file.exists() else None
    meta = {"source": str(path), "imported_from": report["layout"], "import_report": report}
    return module, vocab, stats, meta
