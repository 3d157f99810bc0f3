"""Generated sample data with planted truth: a single-cell reference and a Visium-like slide.

Used by the README demo, the napari plugin's sample data and the tests, so that every workflow
(domain clustering, deconvolution, imputation, integration metrics) can run offline in seconds and
be scored against a known answer. Nothing is ever downloaded.

The generative model, in short:

* **Genes** are real human symbols from the packaged scGPT vocabulary, so a slide resolves against
  the vocabulary like real data would. The gene set depends only on ``n_genes`` (not on ``seed``),
  so references and slides made with different seeds share genes.
* **Cell types** each have a mean expression profile: a shared gamma background perturbed per type,
  a block of 20-40 marker genes strongly up (the first few are the type's textbook markers, e.g.
  ``EPCAM``/``KRT8`` for "Epithelial"), and a few housekeeping genes high in every type.
* **Reference cells** are negative-binomial (Poisson-gamma) draws around their type's profile with
  log-normal library sizes.
* **Slide spots** sit on the Visium hexagonal lattice (100 um pitch, 55 um spots, odd rows offset by
  half a pitch) inside an organic, ellipse-like tissue outline. Curved cortex-like bands plus one
  round "nodule" form the planted spatial domains; each domain has a cell-type composition with a
  dominant type; each spot pools 5-15 cells drawn from its domain's composition and its counts are
  Poisson around the pooled profiles times a per-spot capture efficiency (and a mild per-gene
  platform effect, so slide and reference differ like real assays do).
* **Tissue image**: an H&E-like RGB picture in the Visium ``uns['spatial']`` convention whose
  nucleus density and stain differ by domain, white outside the tissue.
"""

from __future__ import annotations

import json
import re
from importlib import resources

import anndata
import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy import ndimage

from .errors import InputError

__all__ = ["make_sample_reference", "make_sample_slide"]

#: Named cell types with their textbook markers; types beyond this list are called ``type_<k>``.
CELL_TYPE_MARKERS: dict[str, tuple[str, ...]] = {
    "Epithelial": ("EPCAM", "KRT8", "KRT18", "KRT19", "CDH1"),
    "Fibroblast": ("COL1A1", "COL1A2", "COL3A1", "DCN", "LUM"),
    "Endothelial": ("PECAM1", "VWF", "CDH5", "CLDN5"),
    "T cell": ("CD3E", "CD3D", "CD2"),
    "Macrophage": ("CD68", "LYZ", "CD14", "CSF1R"),
    "B cell": ("MS4A1", "CD79A", "CD19"),
    "Smooth muscle": ("ACTA2", "MYH11", "DES", "TAGLN"),
    "Adipocyte": ("ADIPOQ", "PLIN1", "LEP"),
    "Basal": ("KRT5", "KRT14", "TP63"),
    "Lymphatic endothelial": ("PROX1", "LYVE1"),
}
#: Expressed at similar, high levels in every cell type.
HOUSEKEEPING_GENES = ("ACTB", "GAPDH", "B2M", "RPLP0", "EEF1A1", "TPT1", "PPIA", "UBC")

# Visium geometry: centre-to-centre pitch and spot diameter in micrometres.
SPOT_PITCH_UM = 100.0
SPOT_DIAMETER_UM = 55.0
# Full-resolution image scale (a typical Visium full-res scan is 0.25-0.5 um/px).
MICRONS_PER_PIXEL = 0.5
HIRES_LONG_SIDE = 2000
LIBRARY_ID = "sample_slide"
CELLS_PER_SPOT = (5, 15)
MEAN_UMI_PER_CELL_IN_SPOT = 400.0
PLATFORM_EFFECT_SIGMA = 0.2
# Background / border in micrometres around the lattice in the full-resolution frame.
MARGIN_UM = 300.0

_GENE_RE = re.compile(r"^[A-Z][A-Z0-9]{1,7}$")
# Non-coding, mitochondrial, ribosomal, olfactory and placeholder families; pseudogenes end in P<n>.
_GENE_EXCLUDE_PREFIXES = ("LINC", "MIR", "SNOR", "SNHG", "RNU", "RNA", "RNY", "LOC", "OR", "MT",
                          "KIAA", "FLJ", "RPL", "RPS", "FAM")
_PSEUDOGENE_RE = re.compile(r"P\d+$")
# Fixed so the gene set depends on n_genes only.
_GENE_PICK_SEED = 20240601


def _vocab_symbols() -> list[str]:
    """Protein-coding-looking symbols of the packaged vocabulary, sorted (deterministic)."""
    text = resources.files("spgpt_core").joinpath("data/scgpt_human_census_vocab.json").read_text()
    vocab = json.loads(text)
    return sorted(
        g for g in vocab
        if _GENE_RE.match(g) and not g.startswith(_GENE_EXCLUDE_PREFIXES)
        and not _PSEUDOGENE_RE.search(g)
    )


def _cell_type_names(n_types: int) -> list[str]:
    named = list(CELL_TYPE_MARKERS)[:n_types]
    return named + [f"type_{k + 1}" for k in range(len(named), n_types)]


def _pick_genes(n_genes: int, types: list[str]) -> list[str]:
    """Housekeeping + named markers + a fixed random pick of other vocabulary symbols, sorted."""
    fixed = list(HOUSEKEEPING_GENES) + [g for t in types for g in CELL_TYPE_MARKERS.get(t, ())]
    pool = [g for g in _vocab_symbols() if g not in set(fixed)]
    rng = np.random.default_rng(_GENE_PICK_SEED)
    extra = rng.choice(len(pool), size=n_genes - len(fixed), replace=False)
    return sorted(fixed + [pool[i] for i in extra])


def _type_profiles(genes: list[str], types: list[str], rng: np.random.Generator):
    """Relative expression profiles (types x genes, rows sum to 1) and each type's marker genes."""
    n_genes = len(genes)
    index = {g: i for i, g in enumerate(genes)}
    hk = [index[g] for g in HOUSEKEEPING_GENES]
    reserved = set(hk) | {index[g] for t in types for g in CELL_TYPE_MARKERS.get(t, ())}
    free = [i for i in rng.permutation(n_genes) if i not in reserved]
    # Leave at least one block's worth of genes as pure background.
    max_block = (n_genes - len(hk)) // (len(types) + 1)
    base = rng.gamma(shape=0.5, scale=1.0, size=n_genes) + 1e-3
    level = np.median(base)
    profiles = base * rng.lognormal(0.0, 0.35, size=(len(types), n_genes))
    profiles[:, hk] = level * 40.0 * rng.lognormal(0.0, 0.1, size=(len(types), len(hk)))
    markers: dict[str, list[str]] = {}
    for t, name in enumerate(types):
        block = [index[g] for g in CELL_TYPE_MARKERS.get(name, ())]
        size = min(int(rng.integers(20, 41)), max_block)
        take = max(size - len(block), 0)
        block += free[:take]
        free = free[take:]
        fold = np.exp(rng.uniform(np.log(8.0), np.log(30.0), size=len(block)))
        profiles[t, block] = (base[block] + level) * fold
        markers[name] = [genes[i] for i in block]
    return profiles / profiles.sum(axis=1, keepdims=True), markers


def make_sample_reference(
    n_cells_per_type: int = 150, n_types: int = 6, n_genes: int = 400, seed: int = 0
) -> anndata.AnnData:
    """A single-cell reference with planted cell types (raw integer counts).

    Returns AnnData with CSR float32 integer counts in ``X``, ``obs['cell_type']`` (categorical),
    ``varm['true_profiles']`` (genes x types DataFrame of the relative mean profiles the cells were
    drawn from) and ``uns['sample_truth']`` (seed, marker genes per type). Library sizes vary per
    cell (log-normal) and counts are over-dispersed (Poisson-gamma, i.e. negative binomial).
    """
    if n_types < 2:
        raise InputError(f"n_types={n_types}: a reference needs at least 2 cell types; pass n_types>=2.")
    if n_cells_per_type < 1:
        raise InputError(f"n_cells_per_type={n_cells_per_type}: pass a positive number of cells per type.")
    minimum = len(HOUSEKEEPING_GENES) + sum(len(CELL_TYPE_MARKERS.get(t, ())) for t in _cell_type_names(n_types))
    minimum = max(minimum, len(HOUSEKEEPING_GENES) + 3 * (n_types + 1))
    if n_genes < minimum:
        raise InputError(
            f"n_genes={n_genes} is too small for {n_types} cell types with marker blocks; "
            f"pass n_genes>={minimum}."
        )
    rng_profiles, rng_cells = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    types = _cell_type_names(n_types)
    genes = _pick_genes(n_genes, types)
    profiles, markers = _type_profiles(genes, types, rng_profiles)

    labels = np.repeat(np.arange(n_types), n_cells_per_type)
    library = rng_cells.lognormal(np.log(2500.0), 0.45, size=labels.size)
    mean = profiles[labels] * library[:, None]
    dispersion_shape = 4.0  # NB size parameter: variance = mu + mu^2 / 4
    counts = rng_cells.poisson(rng_cells.gamma(dispersion_shape, mean / dispersion_shape))

    adata = anndata.AnnData(
        X=sp.csr_matrix(counts.astype(np.float32)),
        obs=pd.DataFrame(
            {"cell_type": pd.Categorical.from_codes(labels, categories=types)},
            index=[f"cell_{i:05d}" for i in range(labels.size)],
        ),
        var=pd.DataFrame(index=pd.Index(genes)),
    )
    adata.varm["true_profiles"] = pd.DataFrame(profiles.T, index=adata.var_names, columns=types)
    adata.uns["modality"] = "scrna"
    adata.uns["sample_truth"] = {
        "generator": "spgpt_core.datasets.make_sample_reference",
        "seed": int(seed),
        "n_types": int(n_types),
        "n_cells_per_type": int(n_cells_per_type),
        "mean_library_size": 2500.0,
        "nb_dispersion_shape": dispersion_shape,
        "markers": {t: np.array(g, dtype=object) for t, g in markers.items()},
    }
    return adata


def _reference_profiles(reference: anndata.AnnData) -> pd.DataFrame:
    """Genes x types relative profiles: the planted ones if present, else per-type mean of
    library-normalised counts (so any labelled reference with ``obs['cell_type']`` works)."""
    if "true_profiles" in reference.varm:
        return pd.DataFrame(reference.varm["true_profiles"], index=reference.var_names)
    if "cell_type" not in reference.obs:
        raise InputError(
            "The reference has no obs['cell_type'] column; label its cells by type "
            "(or pass reference=None to use make_sample_reference())."
        )
    X = sp.csr_matrix(reference.X, dtype=np.float64)
    totals = np.asarray(X.sum(axis=1)).ravel()
    if np.any(totals <= 0):
        raise InputError("The reference has cells with zero total counts; filter them out first.")
    normalised = sp.diags(1.0 / totals) @ X
    labels = reference.obs["cell_type"].astype("category")
    means = {
        str(t): np.asarray(normalised[(labels == t).to_numpy()].mean(axis=0)).ravel()
        for t in labels.cat.categories if (labels == t).any()
    }
    if len(means) < 2:
        raise InputError("The reference has fewer than 2 cell types in obs['cell_type']; need at least 2.")
    return pd.DataFrame(means, index=reference.var_names)


def _outline_radius(theta: np.ndarray) -> np.ndarray:
    """Relative radius of the tissue outline: a gentle organic wobble around 1."""
    return 1.0 + 0.035 * np.sin(3 * theta + 0.7) + 0.025 * np.sin(5 * theta + 2.1)


# Super-ellipse exponent of the outline: between an ellipse (2) and a rounded rectangle.
_OUTLINE_POWER = 2.6


class _Layout:
    """Tissue outline and planted domains as functions of position in micrometres.

    The same functions label both the spots and the image pixels, so image and truth agree.
    """

    def __init__(self, cx: float, cy: float, ax: float, ay: float, n_domains: int, rng: np.random.Generator):
        self.cx, self.cy, self.ax, self.ay = cx, cy, ax, ay
        self.n_bands = n_domains - 1
        self.curvature = rng.uniform(0.35, 0.55)
        self.wave_phase = rng.uniform(0, 2 * np.pi)
        # The nodule: round, to one side, radius ~ 40% of the tissue half-height.
        side = rng.choice([-1.0, 1.0])
        self.bx = self.cx + side * rng.uniform(0.35, 0.5) * self.ax
        self.by = self.cy + rng.uniform(-0.15, 0.15) * self.ay
        self.br = rng.uniform(0.36, 0.42) * self.ay
        self.thresholds: np.ndarray | None = None

    def in_tissue(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        u, v = (x - self.cx) / self.ax, (y - self.cy) / self.ay
        radius = (np.abs(u) ** _OUTLINE_POWER + np.abs(v) ** _OUTLINE_POWER) ** (1 / _OUTLINE_POWER)
        return radius <= _outline_radius(np.arctan2(v, u))

    def _depth(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Cortex-like curved depth coordinate: bands bend upward towards both sides."""
        u, v = (x - self.cx) / self.ax, (y - self.cy) / self.ay
        return v - self.curvature * u**2 + 0.04 * np.sin(2.6 * np.pi * u + self.wave_phase)

    def _in_nodule(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        theta = np.arctan2(y - self.by, x - self.bx)
        r = self.br * (1.0 + 0.06 * np.sin(3 * theta + 1.0) + 0.03 * np.sin(5 * theta))
        return np.hypot(x - self.bx, y - self.by) <= r

    def fit_bands(self, x: np.ndarray, y: np.ndarray) -> None:
        """Band boundaries at depth quantiles of the (non-nodule) spots, so bands are balanced."""
        depth = self._depth(x, y)[~self._in_nodule(x, y)]
        self.thresholds = np.quantile(depth, np.arange(1, self.n_bands) / self.n_bands)

    def domain(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Domain code per position: bands 0..n_bands-1 by depth, then the nodule (last code)."""
        codes = np.searchsorted(self.thresholds, self._depth(x, y))
        return np.where(self._in_nodule(x, y), self.n_bands, codes)


def _domain_compositions(n_domains: int, n_types: int, rng: np.random.Generator):
    """Cell-type composition per domain: half a dominant type, half Dirichlet background.

    Dominant types cycle through a random permutation of the types, so neighbouring domains
    differ whenever there are at least as many types as domains.
    """
    order = rng.permutation(n_types)
    dominant = np.array([order[d % n_types] for d in range(n_domains)])
    comp = 0.5 * rng.dirichlet(np.full(n_types, 0.7), size=n_domains)
    comp[np.arange(n_domains), dominant] += 0.5
    return comp, dominant


def _render_he(layout: _Layout, n_domains: int, shape: tuple[int, int], um_per_px: float,
               rng: np.random.Generator) -> np.ndarray:
    """H&E-like RGB image (uint8): eosin-pink tissue with hematoxylin-purple nuclei speckle.

    Nucleus density, eosin tint and nuclear hue differ per domain so domains are visible;
    an anisotropic smoothed noise adds fibrous stroma texture; outside the tissue is white.
    """
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    x_um, y_um = (xx + 0.5) * um_per_px, (yy + 0.5) * um_per_px
    tissue = layout.in_tissue(x_um, y_um).astype(np.float32)
    dom = layout.domain(x_um, y_um)

    n_bands = n_domains - 1
    density = np.append(np.linspace(0.025, 0.08, n_bands) if n_bands > 1 else [0.05], 0.16)
    eosin = np.array([[238, 168, 200], [232, 150, 190], [242, 182, 212], [228, 160, 205]], np.float32)
    hema = np.array([[92, 52, 138], [70, 40, 120], [105, 60, 150]], np.float32)
    dom_eosin = eosin[np.arange(n_domains) % len(eosin)] + rng.normal(0, 4, (n_domains, 3))
    dom_hema = hema[np.arange(n_domains) % len(hema)]
    dom_hema[-1] = [62, 34, 112]  # the nodule: densely packed, dark lymphoid-like nuclei

    def smooth_noise(sigma) -> np.ndarray:
        noise = ndimage.gaussian_filter(rng.standard_normal((h, w)).astype(np.float32), sigma=sigma)
        return noise / (noise.std() + 1e-6)

    # Fibrous streaks plus slow blotchy staining variation, as in real sections.
    stain = 1.0 + 0.04 * smooth_noise((1.0, 5.0)) + 0.05 * smooth_noise(25.0)
    nuclei = (rng.random((h, w)) < density[dom]).astype(np.float32)
    nuclei = np.clip(ndimage.gaussian_filter(nuclei, sigma=1.1) * 4.0, 0.0, 1.0)[..., None]

    rgb = dom_eosin[dom] * stain[..., None] * (1.0 - nuclei) + dom_hema[dom] * nuclei
    edge = ndimage.gaussian_filter(tissue, sigma=1.5)[..., None]
    glass = 246.0 + rng.normal(0.0, 1.5, (h, w, 1))
    return np.clip(rgb * edge + glass * (1.0 - edge), 0, 255).astype(np.uint8)


def make_sample_slide(
    n_rows: int = 40,
    n_cols: int = 48,
    n_domains: int = 5,
    seed: int = 0,
    reference: anndata.AnnData | None = None,
) -> anndata.AnnData:
    """A Visium-like slide with planted spatial domains, cell-type mixtures and an H&E-like image.

    ``n_rows`` x ``n_cols`` lattice positions (~78% fall inside the tissue outline, ~1500 spots by
    default). Genes and cell types are those of ``reference`` (default:
    ``make_sample_reference(seed=seed)``); a reference without planted profiles must have
    ``obs['cell_type']`` and its per-type mean profiles are used.

    Returned AnnData:

    * ``X``: raw integer counts (CSR float32);
    * ``obs``: ``array_row``, ``array_col``, ``in_tissue`` (all 1), ``domain`` (categorical truth:
      ``layer_1``.. and ``nodule``), ``true_dominant_type`` (categorical), ``true_n_cells``;
    * ``obsm['spatial']``: (x, y) in full-resolution pixels (``MICRONS_PER_PIXEL`` um/px);
    * ``obsm['true_proportions']``: DataFrame spots x cell types, rows sum to 1;
    * ``uns['spatial'][library_id]``: ``images['hires']`` (uint8 RGB, 2000 px long side) and
      ``scalefactors`` (``tissue_hires_scalef``, ``spot_diameter_fullres``, ``spot_diameter_um``,
      ``microns_per_pixel``), so ``obsm['spatial'] * tissue_hires_scalef`` are hires pixels;
    * ``uns['sample_truth']``: generator parameters and per-domain compositions.
    """
    if n_domains < 2:
        raise InputError(f"n_domains={n_domains}: a slide needs at least 2 domains; pass n_domains>=2.")
    if n_rows < 4 or n_cols < 4:
        raise InputError(f"n_rows={n_rows}, n_cols={n_cols}: pass at least 4 rows and 4 columns of spots.")
    if n_rows * n_cols < 20 * n_domains:
        raise InputError(
            f"A {n_rows}x{n_cols} lattice is too small for {n_domains} domains; "
            f"use more rows/columns or fewer domains (about 20 positions per domain at least)."
        )
    if reference is None:
        reference = make_sample_reference(seed=seed)
    profiles = _reference_profiles(reference)
    types = [str(c) for c in profiles.columns]
    genes = list(profiles.index)
    rng_geo, rng_counts, rng_img = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3))

    # Visium lattice: array_col steps by 2 per 100 um, odd rows offset by one (half a pitch).
    rows, cols = np.divmod(np.arange(n_rows * n_cols), n_cols)
    array_col = 2 * cols + rows % 2
    x_um = MARGIN_UM + array_col * SPOT_PITCH_UM / 2
    y_um = MARGIN_UM + rows * SPOT_PITCH_UM * np.sqrt(3) / 2
    width_um = 2 * MARGIN_UM + (2 * n_cols - 1) * SPOT_PITCH_UM / 2
    height_um = 2 * MARGIN_UM + (n_rows - 1) * SPOT_PITCH_UM * np.sqrt(3) / 2

    # Tissue: a rounded outline nearly inscribed in the lattice (its wobble stays in the margin).
    layout = _Layout(width_um / 2, height_um / 2, 0.49 * (width_um - 2 * MARGIN_UM),
                     0.48 * (height_um - 2 * MARGIN_UM), n_domains, rng_geo)
    keep = layout.in_tissue(x_um, y_um)
    rows, array_col, x_um, y_um = rows[keep], array_col[keep], x_um[keep], y_um[keep]
    layout.fit_bands(x_um, y_um)
    domain = layout.domain(x_um, y_um)
    domain_names = [f"layer_{k + 1}" for k in range(n_domains - 1)] + ["nodule"]

    # Spot composition: 5-15 cells drawn from the domain's composition.
    comp, dominant = _domain_compositions(n_domains, len(types), rng_geo)
    n_spots = keep.sum()
    n_cells = rng_counts.integers(CELLS_PER_SPOT[0], CELLS_PER_SPOT[1] + 1, size=n_spots)
    cell_counts = np.stack([rng_counts.multinomial(n, comp[d]) for n, d in zip(n_cells, domain)])
    proportions = cell_counts / n_cells[:, None]
    # Ties between equally frequent types go to the one the domain favours.
    true_dominant = np.argmax(cell_counts + 1e-3 * comp[domain], axis=1)

    # Counts: each cell brings a gamma-distributed library; sum of cells per type is gamma too.
    cell_shape = 4.0
    type_umis = rng_counts.gamma(np.maximum(cell_counts * cell_shape, 1e-12), MEAN_UMI_PER_CELL_IN_SPOT / cell_shape)
    type_umis[cell_counts == 0] = 0.0
    efficiency = rng_counts.lognormal(0.0, 0.3, size=n_spots)
    platform = rng_counts.lognormal(0.0, PLATFORM_EFFECT_SIGMA, size=len(genes))
    mean = (type_umis @ profiles.to_numpy().T) * efficiency[:, None] * platform[None, :]
    counts = rng_counts.poisson(mean).astype(np.float32)

    to_fullres = 1.0 / MICRONS_PER_PIXEL
    full_w, full_h = width_um * to_fullres, height_um * to_fullres
    hires_scalef = HIRES_LONG_SIDE / max(full_w, full_h)
    hires_shape = (int(round(full_h * hires_scalef)), int(round(full_w * hires_scalef)))
    image = _render_he(layout, n_domains, hires_shape, MICRONS_PER_PIXEL / hires_scalef, rng_img)

    obs_names = [f"spot_{r:02d}x{c:03d}" for r, c in zip(rows, array_col)]
    obs = pd.DataFrame(
        {
            "array_row": rows.astype(np.int64),
            "array_col": array_col.astype(np.int64),
            "in_tissue": np.ones(n_spots, dtype=np.int64),
            "domain": pd.Categorical.from_codes(domain, categories=domain_names),
            "true_dominant_type": pd.Categorical.from_codes(true_dominant, categories=types),
            "true_n_cells": n_cells.astype(np.int64),
        },
        index=obs_names,
    )
    adata = anndata.AnnData(X=sp.csr_matrix(counts), obs=obs, var=pd.DataFrame(index=pd.Index(genes)))
    adata.obsm["spatial"] = np.column_stack([x_um, y_um]) * to_fullres
    adata.obsm["true_proportions"] = pd.DataFrame(proportions, index=adata.obs_names, columns=types)
    adata.uns["spatial"] = {
        LIBRARY_ID: {
            "images": {"hires": image},
            "scalefactors": {
                "tissue_hires_scalef": float(hires_scalef),
                "spot_diameter_fullres": SPOT_DIAMETER_UM * to_fullres,
                "spot_diameter_um": SPOT_DIAMETER_UM,
                "microns_per_pixel": MICRONS_PER_PIXEL,
            },
            "metadata": {"source": "spgpt_core.datasets.make_sample_slide (generated, not real data)"},
        }
    }
    adata.uns["modality"] = "visium"  # read by spgpt_core.pp.modality.infer_modality
    adata.uns["sample_truth"] = {
        "generator": "spgpt_core.datasets.make_sample_slide",
        "seed": int(seed),
        "n_rows": int(n_rows),
        "n_cols": int(n_cols),
        "n_domains": int(n_domains),
        "library_id": LIBRARY_ID,
        "domain_names": np.array(domain_names, dtype=object),
        "cell_types": np.array(types, dtype=object),
        "domain_composition": comp,
        "domain_dominant_type": {name: types[t] for name, t in zip(domain_names, dominant)},
        "cells_per_spot": np.array(CELLS_PER_SPOT),
        "mean_umi_per_cell": MEAN_UMI_PER_CELL_IN_SPOT,
        "platform_effect_sigma": PLATFORM_EFFECT_SIGMA,
        "spot_pitch_um": SPOT_PITCH_UM,
    }
    return adata
