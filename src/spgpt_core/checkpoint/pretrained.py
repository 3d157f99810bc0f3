"""The user-facing model: network + vocabulary + gene statistics, saved as one directory.

A model directory (``save_pretrained`` / ``from_pretrained``, Hugging Face style) holds::

    config.json        model_type, format_version, SpGPTConfig, vocabulary fingerprint
    model.safetensors  weights
    vocab.json         {gene symbol: token id} (scGPT-compatible)
    gene_stats.csv     corpus-level gene means for the two-level normalisation (optional)
    metadata.json      versions that wrote it, provenance, training summary

``load_model`` also accepts released scGPT-format directories (``best_model.pt`` + ``args.json``
+ ``vocab.json`` [+ ``all_dict_mean_std.csv``]), the shipped ``default`` model, and
``random:SIZE[:SEED]`` for a freshly initialised network.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import time
from importlib import resources
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .._version import __version__
from ..atomic import atomic_path
from ..device import resolve_device
from ..errors import CheckpointError
from ..model import SpGPTConfig, SpGPTModel, count_parameters, preset_config
from ..pp.tokenize import GeneStats
from ..pp.vocab import GeneVocab
from .scgpt import read_scgpt_dir
from .spec import parse_random_spec

FORMAT_VERSION = 1
REQUIRED_FILES = ("config.json", "model.safetensors", "vocab.json")


def versions() -> dict:
    """Versions recorded with every model and result."""
    out = {"spgpt": __version__, "torch": str(torch.__version__), "python": platform.python_version()}
    for mod in ("numpy", "scipy", "anndata", "scanpy"):
        try:
            out[mod] = importlib.metadata.version(mod)
        except Exception:  # noqa: BLE001 - optional
            pass
    return out


class SpGPT:
    """A pretrained (or fresh) spgpt model ready for embedding, fine-tuning and export."""

    def __init__(self, module: SpGPTModel, vocab: GeneVocab, gene_stats: GeneStats | None = None,
                 metadata: dict | None = None):
        if len(vocab) != module.cfg.vocab_size:
            raise CheckpointError(
                f"mismatched vocabulary: {len(vocab)} tokens in the vocabulary but the model expects "
                f"{module.cfg.vocab_size}; use the vocab.json the model was trained with"
            )
        for name, want in (("<pad>", module.cfg.pad_token_id), ("<cls>", module.cfg.cls_token_id)):
            if vocab.get(name) != want:
                raise CheckpointError(f"vocabulary puts {name} at id {vocab.get(name)} but the model uses {want}")
        self.module = module
        self.vocab = vocab
        self.gene_stats = gene_stats
        self.metadata = dict(metadata or {})

    # -- construction -------------------------------------------------------------------------

    @property
    def config(self) -> SpGPTConfig:
        return self.module.cfg

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    def to(self, device) -> "SpGPT":
        self.module.to(resolve_device(device))
        return self

    @classmethod
    def random(cls, size: str = "small", seed: int = 0, vocab: GeneVocab | None = None, **overrides) -> "SpGPT":
        """A freshly initialised model of a named size (``tiny``, ``small``, ``scgpt-human``)."""
        vocab = vocab or GeneVocab.default()
        cfg = preset_config(size, vocab_size=len(vocab), pad_token_id=vocab.pad_id, cls_token_id=vocab.cls_id,
                            **overrides)
        torch.manual_seed(seed)
        return cls(SpGPTModel(cfg), vocab, None, {"source": f"random:{size}:{seed}", "size": size})

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, device="cpu") -> "SpGPT":
        """Load an spgpt directory or a released scGPT / scGPT-spatial directory."""
        path = Path(path).expanduser()
        if not path.is_dir():
            raise CheckpointError(f"model directory {path} does not exist; pass --model DIR, 'default' or 'random:small'")
        if (path / "best_model.pt").exists() or (path / "args.json").exists():
            return cls(*read_scgpt_dir(path)).to(device)
        missing = [f for f in REQUIRED_FILES if not (path / f).exists()]
        if missing:
            raise CheckpointError(
                f"{path} is missing {', '.join(missing)}. An spgpt model directory holds {', '.join(REQUIRED_FILES)} "
                "(+ gene_stats.csv, metadata.json); a scGPT directory holds best_model.pt, args.json and vocab.json"
            )
        try:
            header = json.loads((path / "config.json").read_text())
            cfg = SpGPTConfig.from_dict(header["config"])
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{path / 'config.json'} is not a valid spgpt config: {e}") from e
        if header.get("format_version", 0) > FORMAT_VERSION:
            raise CheckpointError(f"{path} was written by a newer spgpt (format {header['format_version']}); upgrade spgpt")
        vocab = GeneVocab.from_file(path / "vocab.json")
        if header.get("vocab_fingerprint") and header["vocab_fingerprint"] != vocab.fingerprint():
            raise CheckpointError(
                f"{path / 'vocab.json'} does not match the vocabulary the model was saved with "
                "(fingerprint differs); restore the original vocab.json"
            )
        module = SpGPTModel(cfg)
        load_state_strict(module, _read_safetensors(path / "model.safetensors"), source=str(path))
        stats = GeneStats.load(path / "gene_stats.csv", cfg.vocab_size) if (path / "gene_stats.csv").exists() else None
        meta = json.loads((path / "metadata.json").read_text()) if (path / "metadata.json").exists() else {}
        meta["source"] = str(path)
        return cls(module, vocab, stats, meta).to(device)

    def save_pretrained(self, path: str | os.PathLike, overwrite: bool = False, extra_metadata: dict | None = None,
                        storage_dtype: str = "float32") -> Path:
        """Write the model directory atomically (a temp dir renamed into place).

        ``storage_dtype="float16"`` halves the file (used for the shipped model's size budget); loading
        always restores float32 parameters, so only the last ~3 significant digits of each weight change.
        """
        path = Path(path).expanduser()
        if storage_dtype not in STORAGE_DTYPES:
            raise ValueError(f"storage_dtype must be one of {', '.join(STORAGE_DTYPES)}, not {storage_dtype!r}")
        store = STORAGE_DTYPES[storage_dtype]
        if path.exists() and not overwrite:
            raise CheckpointError(f"{path} already exists; choose another directory or pass overwrite=True")
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            tmp.mkdir()
            state = {k: (v.to(store) if v.is_floating_point() else v).detach().cpu().contiguous()
                     for k, v in self.module.state_dict().items()}
            save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt", "spgpt_format": str(FORMAT_VERSION)})
            self.vocab.save(tmp / "vocab.json")
            if self.gene_stats is not None:
                self.gene_stats.save(tmp / "gene_stats.csv", self.vocab.tokens)
            header = {"model_type": "spgpt", "format_version": FORMAT_VERSION, "config": self.config.to_dict(),
                      "vocab_fingerprint": self.vocab.fingerprint(), "has_gene_stats": self.gene_stats is not None,
                      "storage_dtype": storage_dtype}
            (tmp / "config.json").write_text(json.dumps(header, indent=2))
            meta = {**self.metadata, **(extra_metadata or {}), "versions": versions(),
                    "saved": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "n_parameters": count_parameters(self.module)}
            (tmp / "metadata.json").write_text(json.dumps(meta, indent=2, default=str))
        return path

    def describe(self) -> dict:
        """Summary shown by the CLI / plugin and stored with results."""
        c = self.config
        return {
            "source": str(self.metadata.get("source", "in-memory")),
            "d_model": c.d_model, "n_layers": c.n_layers, "n_heads": c.n_heads, "d_ffn": c.d_ffn,
            "max_seq_len": c.max_seq_len, "n_parameters": count_parameters(self.module),
            "vocab_size": c.vocab_size,
            "n_genes_with_stats": self.gene_stats.n_known if self.gene_stats is not None else 0,
            **({"finetuned_from": str(self.metadata["finetuned_from"])} if "finetuned_from" in self.metadata else {}),
            **({"training_steps": _training_steps(self.metadata)}
               if isinstance(self.metadata.get("training"), dict) else {}),
        }


def _training_steps(meta: dict) -> int:
    """Optimizer steps of this model and of every model it was continued from (``init_model`` records
    kept by continual pretraining), so a two-stage model reports its whole training."""
    steps = 0
    while isinstance(meta, dict) and isinstance(meta.get("training"), dict):
        steps += int(meta["training"].get("steps", 0))
        meta = meta.get("init_model")
    return steps


#: On-disk precisions of ``save_pretrained``; parameters are float32 in memory whatever the file holds.
STORAGE_DTYPES = {"float32": torch.float32, "float16": torch.float16}


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except Exception as e:  # noqa: BLE001 - corrupt/truncated file
        raise CheckpointError(f"cannot read weights {path}: {e}. The file is corrupt or truncated; re-save the model") from e


def load_state_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load weights; any missing, unexpected or mis-shaped tensor is an error that names it."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    bad_shape = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                 for k in sorted(set(own) & set(state)) if own[k].shape != state[k].shape]
    problems = []
    if missing:
        problems.append(f"missing weights {_abbrev(missing)}")
    if unexpected:
        problems.append(f"unexpected weights {_abbrev(unexpected)}")
    if bad_shape:
        problems.append(f"shape mismatches {_abbrev(bad_shape)}")
    if problems:
        raise CheckpointError(f"cannot load {source}: " + "; ".join(problems) +
                              ". The checkpoint does not match its config.json; it is incomplete or from another model")
    module.load_state_dict(state, strict=True)


def _abbrev(items: list[str], n: int = 6) -> str:
    return ", ".join(items[:n]) + (f" (+{len(items) - n} more)" if len(items) > n else "")


def default_model_dir() -> Path | None:
    """The model shipped inside the package, if this build has one."""
    d = Path(str(resources.files("spgpt_core") / "data" / "default_model"))
    return d if (d / "config.json").exists() else None


def load_model(spec: str | os.PathLike | SpGPT | None = "default", device=None) -> SpGPT:
    """Resolve ``--model``: an SpGPT, ``default``, ``random:SIZE[:SEED]`` or a directory.

    ``device=None`` (spgpt's device policy, :mod:`spgpt_core.device`) keeps an SpGPT where it is and
    loads anything else on the CPU; ``"auto"`` / ``"cpu"`` / ``"cuda"`` move it there.
    """
    if device is None:
        device = spec.device if isinstance(spec, SpGPT) else "cpu"
    if isinstance(spec, SpGPT):
        return spec.to(device)
    spec = "default" if spec is None else str(spec)
    if spec == "default":
        d = default_model_dir()
        if d is None:
            raise CheckpointError(
                "this spgpt build ships no default model yet; pass --model DIR (spgpt or scGPT directory) "
                "or --model random:small for an untrained network"
            )
        model = SpGPT.from_pretrained(d)
        model.metadata["source"] = "default"
        return model.to(device)
    random_spec = parse_random_spec(spec)
    if random_spec is not None:
        try:
            return SpGPT.random(random_spec.size, seed=random_spec.seed or 0).to(device)
        except ValueError as e:
            raise CheckpointError(str(e)) from e
    return SpGPT.from_pretrained(spec).to(device)
