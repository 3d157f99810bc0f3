"""The gene vocabulary (token <-> id) and the mapping of a slide's genes onto it.

Token ids are compatible with the released scGPT-human checkpoints: the packaged CELLxGENE
census vocabulary holds 60,694 HGNC-style gene symbols with ids 0..60693, followed by the special
tokens ``<pad>`` = 60694, ``<cls>`` = 60695 and ``<eoc>`` = 60696.

Gene resolution (:func:`resolve_genes`) decides which vocabulary id each ``adata.var`` row gets:

1. **Source.** With ``gene_col`` the names come from that column (``"index"`` or ``"var_names"``
   mean ``adata.var_names``); an unknown column is an :class:`InputError` listing the columns.
   Without it, ``var_names`` and every string-like ``var`` column are tried and the source with the
   most matched genes wins (ties go to ``var_names``). This picks ``var['gene_symbol']`` for
   slides whose ``var_names`` are Ensembl IDs without any configuration.
2. **Matching.** Exact match first; names still unmatched are matched case-insensitively through
   an upper-case map of the vocabulary (so mouse ``Gad1`` becomes ``GAD1``). Upper-case forms
   shared by several vocabulary tokens are left out of that map, so a case-insensitive match is
   never a guess. Special tokens are never matched.
3. **Duplicates.** When several vars map to the same id the first keeps it and the others get -1
   (counted in ``n_duplicates``), so every id appears at most once per cell.
4. **Failure.** Fewer than ``min_genes`` matches is an :class:`InputError` with the numbers, example
   names and the fix. When ``var_names`` are Ensembl IDs and no column holds symbols, the message
   says the vocabulary uses gene symbols and to pass ``--gene-col`` naming a symbol column.

Only ``adata.var`` is read, so backed (on-disk) AnnData works.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from ..errors import CheckpointError, InputError

PAD_TOKEN, CLS_TOKEN, EOC_TOKEN = "<pad>", "<cls>", "<eoc>"
SPECIAL_TOKENS = (PAD_TOKEN, CLS_TOKEN, EOC_TOKEN)

_PACKAGED_VOCAB = "scgpt_human_census_vocab.json"
_ENSEMBL_RE = re.compile(r"^ENS[A-Z]*G\d{6,}(\.\d+)?$")
_N_EXAMPLES = 8


class GeneVocab:
    """An ordered token list: token ``i`` has id ``i``. Immutable once built."""

    def __init__(self, tokens: Iterable[str]):
        self._tokens = tuple(str(t) for t in tokens)
        self._stoi = {t: i for i, t in enumerate(self._tokens)}
        if len(self._stoi) != len(self._tokens):
            dups = [t for t, c in Counter(self._tokens).items() if c > 1]
            raise CheckpointError(
                f"The gene vocabulary lists {len(dups)} token(s) more than once (e.g. {_examples(dups)}); "
                "each token needs exactly one id. Use the vocab.json that came with the model, or rebuild it."
            )
        self._upper: dict[str, int] | None = None

    @classmethod
    def default(cls) -> GeneVocab:
        """The packaged scGPT-human census vocabulary plus the special tokens (shared, cached)."""
        return _default_vocab()

    @classmethod
    def from_file(cls, path: str | Path) -> GeneVocab:
        """Load a scGPT-style ``vocab.json`` ({token: id}); missing special tokens are appended."""
        path = Path(path)
        try:
            mapping = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise CheckpointError(
                f"Vocabulary file not found: {path}. Check the model directory holds vocab.json."
            ) from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(
                f"Could not read the vocabulary {path} as JSON ({e}). Re-download or re-save the model's vocab.json."
            ) from None
        return cls._from_mapping(mapping, str(path))

    @classmethod
    def _from_mapping(cls, mapping: object, what: str) -> GeneVocab:
        """Validate {token: id} with ids exactly 0..n-1, then append missing special tokens."""
        if not isinstance(mapping, dict) or not mapping:
            raise CheckpointError(f"The vocabulary {what} must be a non-empty JSON object {{token: id}}.")
        bad = [k for k, v in mapping.items() if isinstance(v, bool) or not isinstance(v, int)]
        if bad:
            raise CheckpointError(
                f"The vocabulary {what} has non-integer ids for {len(bad)} token(s) (e.g. {_examples(bad)}); "
                "ids must be integers 0..n-1."
            )
        n = len(mapping)
        ids = np.fromiter(mapping.values(), dtype=np.int64, count=n)
        counts = np.bincount(ids[(ids >= 0) & (ids < n)], minlength=n)
        if (counts != 1).any():
            missing = np.flatnonzero(counts == 0)
            repeated = np.flatnonzero(counts > 1)
            outside = ids[(ids < 0) | (ids >= n)]
            problems = []
            if len(repeated):
                problems.append(f"ids used more than once: {_examples(repeated.tolist())}")
            if len(outside):
                problems.append(f"ids outside 0..{n - 1}: {_examples(outside.tolist())}")
            if len(missing):
                problems.append(f"ids missing: {_examples(missing.tolist())}")
            raise CheckpointError(
                f"The vocabulary {what} has {n} tokens but its ids are not exactly 0..{n - 1} "
                f"({'; '.join(problems)}). Use the vocab.json that came with the model, or rebuild it."
            )
        tokens = [""] * n
        for token, i in mapping.items():
            tokens[i] = token
        tokens += [t for t in SPECIAL_TOKENS if t not in mapping]
        return cls(tokens)

    def save(self, path: str | Path) -> None:
        """Write ``{token: id}`` JSON, the format scGPT checkpoints ship as ``vocab.json``."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self._stoi, indent=1, ensure_ascii=False), encoding="utf-8")

    def __len__(self) -> int:
        return len(self._tokens)

    def __contains__(self, token: object) -> bool:
        return token in self._stoi

    def __getitem__(self, token: str) -> int:
        return self._stoi[token]

    def __repr__(self) -> str:
        return f"GeneVocab({len(self)} tokens, fingerprint={self.fingerprint()})"

    def get(self, token: str, default: int | None = None) -> int | None:
        return self._stoi.get(token, default)

    @property
    def tokens(self) -> list[str]:
        return list(self._tokens)

    @property
    def pad_id(self) -> int:
        return self._special(PAD_TOKEN)

    @property
    def cls_id(self) -> int:
        return self._special(CLS_TOKEN)

    @property
    def eoc_id(self) -> int:
        return self._special(EOC_TOKEN)

    def _special(self, token: str) -> int:
        try:
            return self._stoi[token]
        except KeyError:
            raise CheckpointError(
                f"The vocabulary has no {token} token; load it with GeneVocab.from_file, "
                "which appends the special tokens."
            ) from None

    def lookup(self, names: Iterable[str]) -> np.ndarray:
        """Exact-match ids (int64) for ``names``, -1 where a name is not in the vocabulary."""
        names = list(names)
        get = self._stoi.get
        return np.fromiter((get(n, -1) for n in names), dtype=np.int64, count=len(names))

    def fingerprint(self) -> str:
        """Short sha256 of the ordered token list: equal fingerprints mean identical token ids."""
        return hashlib.sha256("\n".join(self._tokens).encode("utf-8")).hexdigest()[:16]

    def _upper_lookup(self, names: list[str]) -> np.ndarray:
        """Case-insensitive ids via upper-case forms that are unambiguous among the non-special tokens."""
        if self._upper is None:
            genes = [t for t in self._tokens if t not in SPECIAL_TOKENS]
            counts = Counter(t.upper() for t in genes)
            self._upper = {t.upper(): self._stoi[t] for t in genes if counts[t.upper()] == 1}
        get = self._upper.get
        return np.fromiter((get(n.upper(), -1) for n in names), dtype=np.int64, count=len(names))


@functools.lru_cache(maxsize=1)
def _default_vocab() -> GeneVocab:
    text = (resources.files("spgpt_core") / "data" / _PACKAGED_VOCAB).read_text(encoding="utf-8")
    return GeneVocab._from_mapping(json.loads(text), f"packaged {_PACKAGED_VOCAB}")


@dataclass
class GeneMatch:
    """How a slide's genes map onto the vocabulary (one id per ``adata.var`` row, -1 = unused)."""

    vocab_ids: np.ndarray
    source: str
    strategy: str
    n_matched: int
    n_total: int
    n_duplicates: int = 0
    unmatched_examples: list[str] = field(default_factory=list)

    @property
    def fraction(self) -> float:
        return self.n_matched / self.n_total if self.n_total else 0.0

    def report(self) -> str:
        """One line for logs, the CLI and the napari status bar."""
        line = (
            f"matched {self.n_matched:,} / {self.n_total:,} genes ({100 * self.fraction:.1f}%) "
            f"from {self.source} ({self.strategy})"
        )
        if self.n_duplicates:
            line += f"; {self.n_duplicates:,} duplicate(s) dropped"
        if self.unmatched_examples:
            line += f"; unmatched e.g. {', '.join(self.unmatched_examples)}"
        return line

    def to_dict(self) -> dict:
        """Plain-type summary for ``adata.uns`` (h5ad- and JSON-serialisable, no arrays)."""
        return {
            "source": self.source,
            "strategy": self.strategy,
            "n_matched": int(self.n_matched),
            "n_total": int(self.n_total),
            "n_duplicates": int(self.n_duplicates),
            "fraction": float(self.fraction),
            "unmatched_examples": list(self.unmatched_examples),
        }


def resolve_genes(adata, vocab: GeneVocab, gene_col: str | None = None, min_genes: int = 5) -> GeneMatch:
    """Map every ``adata.var`` row to a vocabulary id following the rules in the module docstring."""
    candidates = _candidate_sources(adata, gene_col)
    matches = [_match(names, source, vocab) for source, names in candidates]
    best = max(range(len(matches)), key=lambda i: (matches[i].n_matched, -i))  # ties -> earliest (var_names)
    match, names = matches[best], candidates[best][1]
    if match.n_matched >= min_genes:
        return match

    seen = _examples([str(n) for n in names[:_N_EXAMPLES]])
    tried = ", ".join(f"{m.source} ({m.n_matched} matched)" for m in matches)
    if _looks_ensembl(names):
        raise InputError(
            f"The genes in {match.source} are Ensembl IDs (e.g. {seen}) but the gene vocabulary uses gene "
            f"symbols (e.g. GAPDH), and no var column gave enough symbol matches (tried {tried}; "
            f"{min_genes} needed). Add a column of gene symbols to adata.var and pass --gene-col (gene_col=) "
            f"naming it; available var columns: {_columns(adata.var)}."
        )
    raise InputError(
        f"Only {match.n_matched} of {match.n_total:,} genes matched the gene vocabulary "
        f"({len(vocab):,} tokens, human gene symbols), fewer than the {min_genes} needed (tried {tried}). "
        f"Gene names seen in {match.source}: {seen}. Pass --gene-col (gene_col=) naming the var column that "
        f"holds gene symbols (available: {_columns(adata.var)}), or convert the gene IDs to HGNC symbols first."
    )


def _candidate_sources(adata, gene_col: str | None) -> list[tuple[str, pd.Index]]:
    """(label, names) pairs to try: the requested one, or var_names plus every string-like var column."""
    var = adata.var
    if gene_col is not None:
        if gene_col in ("index", "var_names"):
            return [("var_names", adata.var_names)]
        if gene_col not in var.columns:
            raise InputError(
                f"Gene column '{gene_col}' is not in adata.var; available columns: {_columns(var)}. "
                "Pass one of these, or 'index' to use var_names."
            )
        return [(f"var['{gene_col}']", pd.Index(var[gene_col]))]
    sources = [("var_names", adata.var_names)]
    sources += [(f"var['{c}']", pd.Index(var[c])) for c in var.columns if _is_string_like(var[c])]
    return sources


def _is_string_like(col: pd.Series) -> bool:
    values = col.cat.categories if isinstance(col.dtype, pd.CategoricalDtype) else col
    if pd.api.types.is_string_dtype(values.dtype) and not pd.api.types.is_object_dtype(values.dtype):
        return True
    return pd.api.types.is_object_dtype(values.dtype) and pd.api.types.infer_dtype(values, skipna=True) == "string"


def _match(names: pd.Index, source: str, vocab: GeneVocab) -> GeneMatch:
    """Exact then case-insensitive matching of one source, keeping the first var per vocabulary id."""
    missing = np.asarray(pd.isna(names))
    names_list = ["" if m else str(n) for n, m in zip(names, missing)]
    ids = vocab.lookup(names_list)
    specials = [vocab[t] for t in SPECIAL_TOKENS if t in vocab]
    ids[np.isin(ids, specials)] = -1
    todo = np.flatnonzero((ids < 0) & ~missing)
    n_case = 0
    if len(todo):
        upper_ids = vocab._upper_lookup([names_list[i] for i in todo])
        ids[todo] = upper_ids
        n_case = int((upper_ids >= 0).sum())

    hit = np.flatnonzero(ids >= 0)
    _, first = np.unique(ids[hit], return_index=True)
    duplicate = np.ones(len(hit), dtype=bool)
    duplicate[first] = False
    ids[hit[duplicate]] = -1

    unmatched = np.flatnonzero(ids < 0)
    unmatched = unmatched[~np.isin(unmatched, hit[duplicate])]
    return GeneMatch(
        vocab_ids=ids,
        source=source,
        strategy="exact+case-insensitive" if n_case else "exact",
        n_matched=int((ids >= 0).sum()),
        n_total=len(names_list),
        n_duplicates=int(duplicate.sum()),
        unmatched_examples=[names_list[i] or "<missing>" for i in unmatched[:_N_EXAMPLES]],
    )


def _looks_ensembl(names: pd.Index) -> bool:
    """True when most names look like Ensembl gene IDs (ENSG..., ENSMUSG..., optional .version)."""
    sample = [str(n) for n in names[:200]]
    return bool(sample) and sum(bool(_ENSEMBL_RE.match(n)) for n in sample) > len(sample) / 2


def _columns(var: pd.DataFrame) -> str:
    return ", ".join(f"'{c}'" for c in var.columns) or "(none)"


def _examples(items: list, n: int = _N_EXAMPLES) -> str:
    shown = ", ".join(str(i) for i in items[:n])
    return shown + (", ..." if len(items) > n else "")
