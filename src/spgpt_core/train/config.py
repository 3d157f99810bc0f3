"""Training configuration: one dataclass, loaded from YAML with ``key=value`` overrides."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..checkpoint.spec import is_random_spec, parse_random_spec
from ..errors import CheckpointError, ConfigError


@dataclass
class TrainConfig:
    """Everything a pretraining or fine-tuning run needs. Defaults follow the paper (Methods 4.6)
    where it gives a value; the others are documented here."""

    corpus: str = ""  # folder made by `spgpt corpus build`
    run_dir: str = "runs/spgpt"  # checkpoints/, metrics.jsonl, final model/
    init: str = "random:small"  # random:SIZE[:SEED], an spgpt model dir or a scGPT(-spatial) dir
    model_overrides: dict = field(default_factory=dict)  # SpGPTConfig fields for random init (e.g. n_layers)
    # gene embeddings of a random init: "random", or "coexpression" (corpus SVD loadings; see gene_init.py)
    gene_init: str = "random"
    # data
    patch_size: int = 16  # n: cells per patch = mini-batch (paper: 16)
    k_neighbours: int = 6  # k < n neighbours for GEPS-inter (paper: unspecified; 6 = a Visium spot's ring)
    max_context: int = 600  # expressed genes sampled per cell (paper: 600)
    gen_ratios: list = field(default_factory=lambda: [0.25, 0.5, 0.75])  # share of genes to generate
    # not in the paper: share of cells whose context is binomially thinned (targets stay full depth)
    depth_augment: float = 0.0
    # optimisation
    epochs: int = 4
    max_steps: int = 0  # stop after this many optimizer steps (0 = no limit)
    lr: float = 5e-5  # paper (continual pretraining from scGPT-human)
    lr_decay: float = 0.9  # multiplied into the learning rate after every epoch (paper)
    warmup_steps: int = 0
    weight_decay: float = 0.0
    grad_accum: int = 16  # patches per optimizer step (paper: 16), summed over ranks under DDP
    clip_grad: float = 1.0
    # objectives (paper: equal weights)
    w_gep: float = 1.0
    w_geps_intra: float = 1.0
    w_geps_inter: float = 1.0
    w_ecs: float = 0.0  # elastic cell similarity: fine-tuning only
    ecs_threshold: float = 0.8
    w_moe_balance: float = 0.0  # optional load-balancing term, off as in the paper
    # bookkeeping
    seed: int = 0
    device: str = "auto"
    log_every: int = 10
    eval_every: int = 100  # optimizer steps; 0 = only at the end of each epoch
    checkpoint_every: int = 100  # optimizer steps
    keep_checkpoints: int = 3
    num_threads: int = 0  # torch threads per process (0 = torch default)
    num_workers: int = 0  # data-loader processes building batches ahead of the model (0 = in the training process)

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        problems = []
        if self.patch_size < 2:
            problems.append("patch_size must be >= 2")
        if not 1 <= self.k_neighbours < self.patch_size:
            problems.append(f"k_neighbours must be in 1..patch_size-1 (got {self.k_neighbours}, patch_size {self.patch_size})")
        try:
            parse_random_spec(self.init)
        except CheckpointError as e:
            problems.append(f"init: {e}")
        if self.gene_init not in ("random", "coexpression"):
            problems.append(f"gene_init must be 'random' or 'coexpression' (got {self.gene_init!r})")
        if self.max_context < 2:
            problems.append("max_context must be >= 2")
        if not self.gen_ratios or not all(0 < r < 1 for r in self.gen_ratios):
            problems.append(f"gen_ratios must be fractions in (0, 1), got {self.gen_ratios}")
        if not 0 <= self.depth_augment <= 1:
            problems.append(f"depth_augment must be a share in [0, 1] (got {self.depth_augment})")
        if self.epochs < 1:
            problems.append("epochs must be >= 1")
        if self.lr <= 0 or not 0 < self.lr_decay <= 1:
            problems.append("lr must be > 0 and lr_decay in (0, 1]")
        if self.grad_accum < 1 or self.clip_grad < 0 or self.max_steps < 0 or self.warmup_steps < 0:
            problems.append("grad_accum must be >= 1; clip_grad, max_steps, warmup_steps >= 0")
        weights = [self.w_gep, self.w_geps_intra, self.w_geps_inter, self.w_ecs, self.w_moe_balance]
        if any(w < 0 for w in weights) or sum(weights[:3]) == 0:
            problems.append("loss weights must be >= 0 and at least one of w_gep / w_geps_* > 0")
        if self.num_workers < 0 or self.num_threads < 0:
            problems.append("num_workers and num_threads must be >= 0")
        if self.log_every < 1 or self.checkpoint_every < 1 or self.eval_every < 0 or self.keep_checkpoints < 1:
            problems.append("log_every, checkpoint_every, keep_checkpoints must be >= 1 and eval_every >= 0")
        if problems:
            raise ConfigError("invalid training config: " + "; ".join(problems))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        types = {f.name: f.type for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - set(types))
        if unknown:
            raise ConfigError(f"unknown config keys {unknown}; known keys: {', '.join(sorted(types))}")
        clean = {}
        for k, v in d.items():
            want = types[k]  # annotations are strings (from __future__ import annotations)
            try:  # YAML reads "1e-3" as a string; numbers given as strings are accepted
                if want == "float" and not isinstance(v, bool):
                    v = float(v)
                elif want == "int" and not isinstance(v, bool) and float(v) == int(float(v)):
                    v = int(float(v))
                elif want == "str" and v is not None:
                    v = str(v)
            except (TypeError, ValueError):
                raise ConfigError(f"config key {k}={v!r} must be a {want}") from None
            if want in ("float", "int") and not isinstance(v, (int, float)) or want == "list" and not isinstance(v, list) \
                    or want == "dict" and not isinstance(v, dict):
                raise ConfigError(f"config key {k}={v!r} must be a {want}")
            clean[k] = v
        return cls(**clean)


def _parse_value(text: str):
    return yaml.safe_load(text)


def load_config(path: str | Path | None, overrides: list[str] = ()) -> TrainConfig:
    """Read a YAML config and apply ``key=value`` overrides (values parsed as YAML: 1e-4, [0.5], true).

    Relative ``corpus`` / ``run_dir`` / ``init`` paths in the file are resolved against the file's
    folder; those given as overrides against the current directory.
    """
    d: dict = {}
    if path is not None:
        p = Path(path)
        try:
            d = yaml.safe_load(p.read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(f"cannot read config {p}: {e}") from e
        if not isinstance(d, dict):
            raise ConfigError(f"{p} must be a YAML mapping of config keys")
        for key in ("corpus", "run_dir"):
            if isinstance(d.get(key), str) and d[key] and not Path(d[key]).is_absolute():
                d[key] = str((p.parent / d[key]).resolve())
        init = d.get("init")
        if isinstance(init, str) and not is_random_spec(init) and init != "default" and not Path(init).is_absolute():
            d["init"] = str((p.parent / init).resolve())
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value")
        k, v = item.split("=", 1)
        if "." in k:  # model_overrides.n_layers=2
            top, sub = k.split(".", 1)
            d.setdefault(top, {})[sub] = _parse_value(v)
        else:
            d[k] = _parse_value(v)
    return TrainConfig.from_dict(d)
