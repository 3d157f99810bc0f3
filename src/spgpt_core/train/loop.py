"""The explicit training loop (nanoGPT style): pretraining and fine-tuning share it.

One process or many (``torchrun``: DistributedDataParallel, NCCL on GPU, gloo on CPU; the same
command runs single-process). An optimizer step accumulates ``grad_accum`` patches, spread over the
ranks; step s always sees the same patches, whatever the number of ranks (see ``sampler``).

Checkpoints (every ``checkpoint_every`` steps, at epoch ends and at the end) hold the model,
optimizer, position in the run and every rank's torch RNG state. They are written to a temporary
file and renamed, then ``checkpoints/latest`` is updated the same way, so a crash never leaves a
broken latest checkpoint; ``resume`` falls back to the newest readable one. Because batches are a
pure function of (seed, epoch, patch index), a resumed run logs exactly the losses of an
uninterrupted one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from ..atomic import atomic_path
from .batch import EpochBatches, batch_stream, make_batch
from ..checkpoint.pretrained import SpGPT, load_model
from ..checkpoint.spec import parse_random_spec
from .config import TrainConfig
from .corpus import Corpus
from ..device import out_of_memory
from ..distributed import close, init_distributed
from ..errors import ConfigError, InputError
from .gene_init import init_gene_embeddings
from ..model import ecs_loss, masked_mse
from ..pp.tokenize import GeneStats
from ..progress import Progress, ensure_progress
from .sampler import PatchSampler

log = logging.getLogger(__name__)
LOSS_TERMS = ("gep", "geps_intra", "geps_inter", "ecs", "moe_balance")


def _all_reduce_sum(t: torch.Tensor, world: int) -> torch.Tensor:
    if world > 1:
        torch.distributed.all_reduce(t)
    return t


# ---------------------------------------------------------------------------------------------


def compute_losses(model, batch, cfg: TrainConfig) -> dict[str, torch.Tensor]:
    """Every objective on one patch; ``total`` is their weighted sum (Eq. 9, 10, 12 + ECS)."""
    has_xy = batch.coords is not None
    coords = batch.coords if has_xy else torch.zeros(len(batch.genes), 2, device=batch.genes.device)
    out = model(batch.genes, batch.values, batch.pad, batch.query_genes, batch.query_pad, batch.modality,
                coords=coords, k_neighbours=cfg.k_neighbours)
    keep = ~batch.query_pad
    losses = {k: masked_mse(out[k].float(), batch.target, keep) for k in ("gep", "geps_intra", "geps_inter")}
    if not has_xy:  # random patches have no spatial neighbourhood: the term is kept in the graph, weighted 0
        losses["geps_inter"] = losses["geps_inter"] * 0.0
    losses["ecs"] = ecs_loss(out["spot"].float(), cfg.ecs_threshold)
    losses["moe_balance"] = out["moe_balance"].float()
    losses["total"] = (cfg.w_gep * losses["gep"] + cfg.w_geps_intra * losses["geps_intra"]
                       + cfg.w_geps_inter * losses["geps_inter"] + cfg.w_ecs * losses["ecs"]
                       + cfg.w_moe_balance * losses["moe_balance"])
    return losses


class Trainer:
    def __init__(self, cfg: TrainConfig, model=None, corpus: Corpus | None = None, progress: Progress | None = None):
        self.cfg = cfg
        self.progress = ensure_progress(progress)
        self.rank, self.world, self.device = init_distributed(cfg.device)
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        if cfg.grad_accum % self.world:
            raise ConfigError(f"grad_accum={cfg.grad_accum} must be a multiple of the number of processes ({self.world})")
        self.accum = cfg.grad_accum // self.world
        self.corpus = corpus if corpus is not None else Corpus(cfg.corpus)
        if model is None:
            random_spec = parse_random_spec(cfg.init)
            if random_spec is not None:
                seed = cfg.seed if random_spec.seed is None else random_spec.seed
                model = SpGPT.random(random_spec.size, seed=seed, vocab=self.corpus.vocab, **cfg.model_overrides)
                # an existing run is about to be resumed (its checkpoint replaces these weights)
                if cfg.gene_init == "coexpression" and not (Path(cfg.run_dir).expanduser() / "checkpoints" / "latest").exists():
                    model.metadata = {**model.metadata, **init_gene_embeddings(model.module, self.corpus)}
            else:
                model = load_model(cfg.init, device="cpu")
        if model.vocab.fingerprint() != self.corpus.vocab.fingerprint():
            raise ConfigError("the model's vocabulary differs from the corpus vocabulary; build the corpus with "
                              "the model's vocab or start from a compatible model")
        # second-level normalisation: the model's corpus gene means where it has them, else this corpus'
        means = self.corpus.gene_stats.means.copy()
        if model.gene_stats is not None:
            known = np.isfinite(model.gene_stats.means)
            means[known] = model.gene_stats.means[known]
        self.gene_means = means
        self.model = model.to(self.device)
        net = self.model.module
        self.net = net
        if self.world > 1:
            self.net = DDP(net, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.optimizer = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.train_sampler = PatchSampler(self.corpus, cfg.patch_size, split=0, seed=cfg.seed)
        self.val_sampler = PatchSampler(self.corpus, cfg.patch_size, split=1, seed=cfg.seed)
        self.run_dir = Path(cfg.run_dir).expanduser()
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.metrics_file = self.run_dir / "metrics.jsonl"
        self.epoch, self.step_in_epoch, self.global_step, self.tokens_seen = 0, 0, 0, 0
        self.elapsed = 0.0
        self._tb = None

    # -- bookkeeping ----------------------------------------------------------------------------

    def _lr(self) -> float:
        warm = min(1.0, (self.global_step + 1) / self.cfg.warmup_steps) if self.cfg.warmup_steps else 1.0
        return self.cfg.lr * warm * self.cfg.lr_decay ** self.epoch

    def _log(self, record: dict) -> None:
        if self.rank != 0:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.metrics_file, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is None:
            try:
                from torch.utils.tensorboard import SummaryWriter  # optional: tensorboard is not a dependency

                self._tb = SummaryWriter(str(self.run_dir / "tensorboard"))
            except Exception:  # noqa: BLE001 - TensorBoard is optional
                self._tb = False
        if self._tb:
            for k, v in record.items():
                if isinstance(v, float):
                    self._tb.add_scalar(k, v, record.get("step", 0))

    def save_checkpoint(self) -> Path | None:
        rng = [None] * self.world
        state = torch.get_rng_state()
        if self.world > 1:
            torch.distributed.all_gather_object(rng, state)
        else:
            rng = [state]
        if self.rank != 0:
            return None
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        path = self.ckpt_dir / f"step_{self.global_step:08d}.pt"
        with atomic_path(path) as tmp:
            torch.save({"model": self.model.module.state_dict(), "optimizer": self.optimizer.state_dict(),
                        "epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "global_step": self.global_step,
                        "tokens_seen": self.tokens_seen, "elapsed": self.elapsed, "rng": rng,
                        "config": self.cfg.to_dict(), "model_config": self.model.config.to_dict()}, tmp)
        with atomic_path(self.ckpt_dir / "latest") as tmp:
            tmp.write_text(path.name)
        for old in sorted(self.ckpt_dir.glob("step_*.pt"))[: -self.cfg.keep_checkpoints]:
            old.unlink(missing_ok=True)
        return path

    def resume(self) -> None:
        """Continue from the newest readable checkpoint in ``run_dir`` (newest first, corrupt ones skipped)."""
        if not self.ckpt_dir.is_dir():
            raise InputError(f"nothing to resume: {self.ckpt_dir} does not exist; start without --resume or point "
                             "run_dir at an existing run")
        candidates = sorted(self.ckpt_dir.glob("step_*.pt"), reverse=True)
        latest = self.ckpt_dir / "latest"
        if latest.exists() and (self.ckpt_dir / latest.read_text().strip()).exists():
            first = self.ckpt_dir / latest.read_text().strip()
            candidates = [first] + [c for c in candidates if c != first]
        errors = []
        for c in candidates:
            try:
                ck = torch.load(c, map_location="cpu", weights_only=False)
                self.model.module.load_state_dict(ck["model"])
                self.optimizer.load_state_dict(ck["optimizer"])
                break
            except Exception as e:  # noqa: BLE001 - a truncated/corrupt file: try the previous checkpoint
                errors.append(f"{c.name}: {type(e).__name__}")
        else:
            raise InputError(f"no readable checkpoint in {self.ckpt_dir} ({'; '.join(errors) or 'none found'}); "
                             "the run cannot be resumed, start it again without --resume")
        if errors:
            log.warning("skipped unreadable checkpoints: %s", "; ".join(errors))
        self.epoch, self.step_in_epoch = ck["epoch"], ck["step_in_epoch"]
        self.global_step, self.tokens_seen, self.elapsed = ck["global_step"], ck["tokens_seen"], ck["elapsed"]
        rng = ck["rng"]
        torch.set_rng_state(rng[self.rank] if len(rng) == self.world else rng[0])
        if self.rank == 0 and self.metrics_file.exists():  # drop what was logged after the checkpoint
            kept = [ln for ln in self.metrics_file.read_text().splitlines()
                    if ln and json.loads(ln).get("step", 0) <= self.global_step and "event" not in json.loads(ln)]
            self.metrics_file.write_text("".join(k + "\n" for k in kept))
        self._log({"event": "resumed", "step": self.global_step, "checkpoint": c.name})
        log.info("resumed from %s (epoch %d, step %d)", c.name, self.epoch, self.global_step)

    # -- training -------------------------------------------------------------------------------

    def evaluate(self) -> dict[str, float]:
        patches = self.val_sampler.rank_patches(0, self.rank, self.world)
        sums = torch.zeros(len(LOSS_TERMS) + 1, dtype=torch.float64)
        self.net.eval()
        with torch.inference_mode(), self._autocast():
            for i, p in enumerate(patches):
                b = make_batch(self.corpus, p, self.cfg, self.model.config, self.gene_means,
                               [self.cfg.seed, 1_000_003, i * self.world + self.rank]).to(self.device)
                losses = compute_losses(self.model.module, b, self.cfg)
                sums[:-1] += torch.tensor([float(losses[k]) for k in LOSS_TERMS], dtype=torch.float64)
                sums[-1] += 1
        self.net.train()
        sums = _all_reduce_sum(sums.to(self.device), self.world).cpu()
        if sums[-1] == 0:
            return {}
        return {f"val_{k}": float(sums[i] / sums[-1]) for i, k in enumerate(LOSS_TERMS)}

    def _autocast(self):
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def total_steps(self) -> int:
        per_epoch = [len(self.train_sampler.rank_patches(e, self.rank, self.world)) // self.accum
                     for e in range(self.cfg.epochs)]
        total = sum(per_epoch)
        return min(total, self.cfg.max_steps) if self.cfg.max_steps else total

    def train(self):
        """Run (or continue) training; returns the trained :class:`SpGPT` (also saved to run_dir/model)."""
        try:
            return self._train()
        except torch.OutOfMemoryError as e:  # CUDA: say which knobs shrink a step instead of torch's dump
            c = self.cfg
            raise out_of_memory(
                f"training on patches of {c.patch_size} cells with up to {c.max_context} expressed genes each",
                self.device, f"max_context (now {c.max_context}; `spgpt finetune` / `spgpt domains`: --max-context) "
                f"or patch_size (now {c.patch_size}; cells per micro-batch), and raise grad_accum to keep the step size"
            ) from e

    def _train(self):
        cfg = self.cfg
        if self.rank == 0:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
        if self.global_step == 0:  # dropout RNG; a resumed run restores it from the checkpoint
            torch.manual_seed(cfg.seed + self.rank)
        total = self.total_steps()
        if total == 0:
            raise InputError("the corpus gives no training step: fewer patches than grad_accum "
                             f"({len(self.train_sampler.patches(0))} patches, grad_accum={cfg.grad_accum}); "
                             "lower grad_accum or patch_size, or add slides")
        self.progress.start(total, "training")
        self.progress.update(self.global_step)
        self.net.train()
        window = {k: 0.0 for k in LOSS_TERMS}
        window_n, window_tokens, t_window = 0, 0, time.perf_counter()
        done = self.cfg.max_steps and self.global_step >= self.cfg.max_steps
        while self.epoch < cfg.epochs and not done:
            patches = self.train_sampler.rank_patches(self.epoch, self.rank, self.world)
            steps = len(patches) // self.accum
            batches = EpochBatches(self.corpus, patches[: steps * self.accum], cfg, self.model.config, self.gene_means,
                                   seed=cfg.seed, epoch=self.epoch, rank=self.rank, world=self.world)
            stream = batch_stream(batches, self.step_in_epoch * self.accum, cfg.num_workers)
            while self.step_in_epoch < steps:
                self.progress.check()
                t0 = time.perf_counter()
                lr = self._lr()
                for g in self.optimizer.param_groups:
                    g["lr"] = lr
                self.optimizer.zero_grad(set_to_none=True)
                step_terms = torch.zeros(len(LOSS_TERMS), dtype=torch.float64)
                n_tok = 0
                for j in range(self.accum):
                    batch = next(stream).to(self.device)
                    sync = j == self.accum - 1 or self.world == 1
                    # DDP all-reduces gradients only on the last micro-batch of the step
                    ctx = self.net.no_sync() if (self.world > 1 and not sync) else contextlib.nullcontext()
                    with ctx, self._autocast():
                        losses = compute_losses(self.net, batch, cfg)  # through the DDP wrapper when distributed
                        (losses["total"] / self.accum).backward()
                    step_terms += torch.tensor([float(losses[k].detach()) for k in LOSS_TERMS], dtype=torch.float64)
                    n_tok += batch.n_tokens
                if cfg.clip_grad:
                    torch.nn.utils.clip_grad_norm_(self.model.module.parameters(), cfg.clip_grad)
                self.optimizer.step()
                stats = _all_reduce_sum(torch.cat([step_terms, torch.tensor([float(n_tok)], dtype=torch.float64)])
                                        .to(self.device), self.world).cpu()
                for k_i, k in enumerate(LOSS_TERMS):
                    window[k] += float(stats[k_i]) / (self.accum * self.world)
                window_n += 1
                window_tokens += int(stats[-1])
                self.tokens_seen += int(stats[-1])
                self.step_in_epoch += 1
                self.global_step += 1
                self.elapsed += time.perf_counter() - t0
                self.progress.update(1)
                if self.global_step % cfg.log_every == 0:
                    dt = time.perf_counter() - t_window
                    rec = {"step": self.global_step, "epoch": self.epoch, "lr": lr,
                           **{k: window[k] / window_n for k in LOSS_TERMS},
                           "loss": sum(getattr(cfg, "w_" + k) * window[k] / window_n for k in LOSS_TERMS),
                           "tokens_per_s": window_tokens / dt, "tokens_seen": self.tokens_seen,
                           "elapsed_s": self.elapsed}
                    self._log(rec)
                    window = {k: 0.0 for k in LOSS_TERMS}
                    window_n, window_tokens, t_window = 0, 0, time.perf_counter()
                if cfg.eval_every and self.global_step % cfg.eval_every == 0:
                    self._log({"step": self.global_step, "epoch": self.epoch, **self.evaluate()})
                if self.global_step % cfg.checkpoint_every == 0:
                    self.save_checkpoint()
                if cfg.max_steps and self.global_step >= cfg.max_steps:
                    done = True
                    break
            if not done:
                self.epoch += 1
                self.step_in_epoch = 0
                if not cfg.eval_every:
                    self._log({"step": self.global_step, "epoch": self.epoch, **self.evaluate()})
                self.save_checkpoint()
        if cfg.eval_every and self.global_step % cfg.eval_every:
            self._log({"step": self.global_step, "epoch": self.epoch, **self.evaluate()})
        self.save_checkpoint()
        self.progress.close()
        return self.finish()

    def finish(self):
        self.model.gene_stats = GeneStats(self.gene_means.copy())
        self.model.module.eval()
        if self.rank == 0:
            summary = {"steps": self.global_step, "tokens": self.tokens_seen, "wall_time_s": round(self.elapsed, 1),
                       "epochs_completed": self.epoch, "world_size": self.world, "corpus": str(self.corpus.path),
                       "corpus_cells": self.corpus.n_cells, "config": self.cfg.to_dict()}
            prior = self.model.metadata
            if isinstance(prior.get("training"), dict):  # continued from a trained model: keep its record too
                self.model.metadata = {**prior, "init_model": prior}
            self.model.metadata["training"] = summary
            self.model.save_pretrained(self.run_dir / "model", overwrite=True)
        if self.world > 1:
            torch.distributed.barrier()
        return self.model


def pretrain(cfg: TrainConfig, resume: bool = False, progress: Progress | None = None):
    """Pretrain (or continue pretraining) as configured; returns the trained SpGPT."""
    trainer = Trainer(cfg, progress=progress)
    if resume:
        trainer.resume()
    elif (trainer.ckpt_dir / "latest").exists():
        raise InputError(f"{trainer.run_dir} already holds a run; pass --resume to continue it or choose another "
                         "run_dir (nothing was overwritten)")
    try:
        return trainer.train()
    finally:
        close(trainer.world)

