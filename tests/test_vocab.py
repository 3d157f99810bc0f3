"""Gene vocabulary and gene resolution, on the packaged vocabulary and every real slide."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from helpers.data import all_h5ad, data_file
from spgpt_core.errors import CheckpointError, InputError
from spgpt_core.pp.vocab import CLS_TOKEN, EOC_TOKEN, PAD_TOKEN, GeneMatch, GeneVocab, resolve_genes

HUMAN = (  # everything else under shared/data is mouse
    "cosmx_nsclc/",
    "dlpfc/",
    "hcc1_visium/",
    "her2st/",
    "paste_breast/",
    "giotto_mini/giotto_mini_visium_prostate",
)


@pytest.fixture(scope="module")
def vocab() -> GeneVocab:
    return GeneVocab.default()


def var_only(names, **columns) -> ad.AnnData:
    """A slide with no cells: gene resolution only reads var."""
    return ad.AnnData(var=pd.DataFrame(columns, index=pd.Index(names, dtype=str)))


# --- GeneVocab ---------------------------------------------------------------------------------


def test_default_vocab_layout(vocab):
    assert len(vocab) == 60697
    assert (vocab.pad_id, vocab.cls_id, vocab.eoc_id) == (60694, 60695, 60696)
    assert vocab[PAD_TOKEN] == 60694 and vocab.tokens[60695] == CLS_TOKEN and EOC_TOKEN in vocab
    assert GeneVocab.default() is vocab  # cached
    assert "GAPDH" in vocab and isinstance(vocab["GAPDH"], int)
    assert vocab.get("NOT_A_GENE") is None and vocab.get("NOT_A_GENE", -1) == -1
    with pytest.raises(KeyError):
        vocab["NOT_A_GENE"]
    ids = vocab.lookup(["GAPDH", "nope", "ACTB"])
    assert ids.dtype == np.int64 and ids.tolist() == [vocab["GAPDH"], -1, vocab["ACTB"]]
    assert vocab.lookup(["gapdh"]).tolist() == [-1]  # lookup is exact


def test_default_vocab_matches_shared_reference_file(vocab):
    ref = json.loads(data_file("vocab/scgpt_human_census_vocab.json").read_text())
    assert all(vocab[t] == i for t, i in ref.items())
    assert GeneVocab.from_file(data_file("vocab/scgpt_human_census_vocab.json")).fingerprint() == vocab.fingerprint()


def test_fingerprint_tracks_token_order():
    a, b = GeneVocab(["A", "B", "C"]), GeneVocab(["A", "C", "B"])
    assert a.fingerprint() == GeneVocab(["A", "B", "C"]).fingerprint()
    assert a.fingerprint() != b.fingerprint() and len(a.fingerprint()) == 16


def test_duplicate_tokens_rejected():
    with pytest.raises(CheckpointError, match="more than once.*GAPDH"):
        GeneVocab(["GAPDH", "ACTB", "GAPDH"])


def test_save_round_trip(tmp_path, vocab):
    path = tmp_path / "model" / "vocab.json"
    vocab.save(path)
    saved = json.loads(path.read_text())
    assert saved["<pad>"] == 60694 and len(saved) == len(vocab)
    again = GeneVocab.from_file(path)
    assert again.tokens == vocab.tokens and again.fingerprint() == vocab.fingerprint()


def test_from_file_appends_missing_specials(tmp_path):
    path = tmp_path / "vocab.json"
    path.write_text(json.dumps({"B": 1, "A": 0, "<cls>": 2}))
    v = GeneVocab.from_file(path)
    assert v.tokens == ["A", "B", "<cls>", "<pad>", "<eoc>"]
    assert (v.cls_id, v.pad_id, v.eoc_id) == (2, 3, 4)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"A": 0, "B": 2}', r"not exactly 0\.\.1.*outside.*2.*missing: 1"),
        ('{"A": 0, "B": 0}', r"used more than once: 0"),
        ('{"A": 0, "B": "1"}', r"non-integer ids.*B"),
        ('["A", "B"]', r"non-empty JSON object"),
        ("{not json", r"as JSON"),
    ],
)
def test_from_file_errors(tmp_path, content, message):
    path = tmp_path / "vocab.json"
    path.write_text(content)
    with pytest.raises(CheckpointError, match=message):
        GeneVocab.from_file(path)


def test_from_file_missing(tmp_path):
    with pytest.raises(CheckpointError, match="not found.*vocab.json"):
        GeneVocab.from_file(tmp_path / "vocab.json")


def test_vocab_without_specials_says_how_to_fix():
    with pytest.raises(CheckpointError, match="from_file"):
        GeneVocab(["A"]).pad_id


# --- resolve_genes on real slides --------------------------------------------------------------


@pytest.mark.parametrize("rel", all_h5ad())
def test_resolve_genes_on_every_real_slide(rel, vocab):
    adata = ad.read_h5ad(data_file(rel), backed="r")
    try:
        match = resolve_genes(adata, vocab)
    finally:
        adata.file.close()
    human = rel.startswith(HUMAN)
    ids = match.vocab_ids
    assert ids.dtype == np.int64 and len(ids) == adata.n_vars == match.n_total
    used = ids[ids >= 0]
    assert len(np.unique(used)) == len(used) == match.n_matched  # each vocabulary id once
    assert used.max() < vocab.pad_id  # never a special token
    # lowest measured fraction is 85.3% (Slide-seq purkinje: old mouse symbols such as Atp5a1)
    assert match.fraction >= 0.85, match.report()
    if rel.startswith("dlpfc/"):  # Ensembl var_names: the symbol column is found automatically
        assert match.source == "var['gene_symbol']"
    else:
        assert match.source == "var_names"
    # human symbols match exactly; mouse symbols need the case-insensitive pass
    assert match.strategy == ("exact" if human else "exact+case-insensitive"), match.report()
    json.dumps(match.to_dict())


def test_dlpfc_report_and_serialisation(tmp_path, vocab):
    adata = ad.read_h5ad(data_file("dlpfc/DLPFC_151673.h5ad"), backed="r")
    match = resolve_genes(adata, vocab)
    adata.file.close()
    # measured: 7,389 of 8,513 (887 vars have no symbol, the rest are mostly LOC/LINC ids outside the vocab)
    assert 7300 <= match.n_matched <= 7500 and match.n_duplicates == 2
    line = match.report()
    assert line.startswith("matched 7,389 / 8,513 genes (86.8%) from var['gene_symbol'] (exact)")
    assert "<missing>" in line and "\n" not in line
    small = ad.AnnData(np.zeros((1, 1), np.float32))
    small.uns["genes"] = match.to_dict()
    small.write_h5ad(tmp_path / "x.h5ad")
    assert ad.read_h5ad(tmp_path / "x.h5ad").uns["genes"]["n_matched"] == match.n_matched


def test_mouse_symbols_match_case_insensitively(vocab):
    adata = ad.read_h5ad(data_file("starmap_visp/STARmap_VISp_1207.h5ad"), backed="r")
    match = resolve_genes(adata, vocab)
    names = list(adata.var_names)
    adata.file.close()
    assert match.n_matched == 927  # measured
    i = names.index("Gad1")
    assert match.vocab_ids[i] == vocab["GAD1"]


def test_ensembl_without_symbols_explains_fix(vocab):
    adata = ad.read_h5ad(data_file("dlpfc/DLPFC_151674.h5ad"), backed="r")
    var = adata.var.drop(columns=["gene_symbol"])
    adata.file.close()
    with pytest.raises(InputError, match=r"Ensembl IDs.*gene symbols.*--gene-col.*'gene_ids'"):
        resolve_genes(ad.AnnData(var=var), vocab)


def test_explicit_gene_col(vocab):
    adata = ad.read_h5ad(data_file("dlpfc/DLPFC_151673.h5ad"), backed="r")
    var = adata.var
    adata.file.close()
    slide = ad.AnnData(var=var)
    assert resolve_genes(slide, vocab, gene_col="gene_symbol").n_matched == 7389
    with pytest.raises(InputError, match=r"Ensembl IDs"):
        resolve_genes(slide, vocab, gene_col="index")
    with pytest.raises(InputError, match=r"'symbol' is not in adata.var.*'gene_ids', 'gene_symbol'"):
        resolve_genes(slide, vocab, gene_col="symbol")


# --- resolve_genes rules -----------------------------------------------------------------------


def test_no_matching_genes_reports_numbers_and_examples(vocab):
    with pytest.raises(InputError, match=r"Only 1 of 3 genes.*5 needed.*geneA, geneB, GAPDH.*--gene-col"):
        resolve_genes(var_only(["geneA", "geneB", "GAPDH"]), vocab)
    assert resolve_genes(var_only(["geneA", "geneB", "GAPDH"]), vocab, min_genes=1).n_matched == 1


def test_duplicates_keep_first(vocab):
    match = resolve_genes(var_only(["Gad1", "GAD1", "ACTB", "actb"]), vocab, min_genes=1)
    assert match.vocab_ids.tolist() == [vocab["GAD1"], -1, vocab["ACTB"], -1]
    assert (match.n_matched, match.n_duplicates, match.unmatched_examples) == (2, 2, [])
    assert "2 duplicate(s) dropped" in match.report()


def test_source_with_most_matches_wins_and_ties_go_to_var_names(vocab):
    names = ["ENSG1", "ENSG2", "ENSG3"]
    wins = resolve_genes(var_only(names, sym=["GAPDH", "ACTB", "x"]), vocab, min_genes=1)
    assert (wins.source, wins.n_matched) == ("var['sym']", 2)
    tie = resolve_genes(var_only(["GAPDH", "x", "y"], other=["x", "ACTB", "y"]), vocab, min_genes=1)
    assert tie.source == "var_names"
    numeric = var_only(["GAPDH", "ACTB"], n_cells=[1, 2], flag=[True, False])
    assert resolve_genes(numeric, vocab, min_genes=1).source == "var_names"


def test_ambiguous_upper_case_forms_are_not_guessed():
    v = GeneVocab(["Abc", "ABC", "Xyz", PAD_TOKEN, CLS_TOKEN, EOC_TOKEN])
    match = resolve_genes(var_only(["abc", "xyz", "<pad>"]), v, min_genes=1)
    assert match.vocab_ids.tolist() == [-1, 2, -1]


def test_missing_names_in_symbol_column(vocab):
    slide = var_only(["a", "b", "c"], sym=pd.Categorical(["GAPDH", None, "ACTB"]))
    match = resolve_genes(slide, vocab, min_genes=1)
    assert match.vocab_ids.tolist() == [vocab["GAPDH"], -1, vocab["ACTB"]]
    assert match.unmatched_examples == ["<missing>"]


def test_gene_match_fraction_of_empty():
    assert GeneMatch(np.zeros(0, np.int64), "var_names", "exact", 0, 0).fraction == 0.0
