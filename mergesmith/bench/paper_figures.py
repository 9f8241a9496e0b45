"""Published figures the bench's report sets its own rows beside: CLIP ViT-B/32, eight image-classification tasks
(SUN397, Cars, RESISC45, EuroSAT, SVHN, GTSRB, MNIST, DTD), the task_vectors checkpoints of Ilharco et al. (2023)
that AdaMerging, Representation Surgery and WEMoE all use. Average absolute test accuracy over the eight tasks, in %;
normalized = the figure / the individual experts' average (90.5), as the bench normalizes its own rows.

Each figure cites the paper it comes from and the table or file it was read from. None was re-run here.
"""

from __future__ import annotations

from dataclasses import dataclass

SETTING = "CLIP ViT-B/32, eight image tasks, task_vectors checkpoints (Ilharco et al. 2023)"


@dataclass(frozen=True)
class PaperFigure:
    method: str
    average: float  # average absolute accuracy over the eight tasks, %
    category: str  # the bench category it is compared with (CATEGORIES)
    source: str  # the paper, and the table or file the number was read from

    @property
    def normalized(self) -> float:
        return 100 * self.average / INDIVIDUAL_AVERAGE


# The individual fine-tuned experts' average: AdaMerging (Yang et al., ICLR 2024, arXiv 2310.02575), ViT-B/32 table
# (the same 90.5 in the CART README and Iso, arXiv 2502.04959, Table 4).
INDIVIDUAL_AVERAGE = 90.5

# The categories of the "papers vs this bench" table, in its order: (key, label).
CATEGORIES = (
    ("pretrained", "pretrained model"),
    ("experts", "individual experts"),
    ("static", "best static data-free merge"),
    ("adapted", "best test-time-adapted static merge"),
    ("routing", "best routing / per-task-module merge"),
)

FIGURES = (
    # Zero-shot 48.0: AdaMerging paper's ViT-B/32 table, row "Pretrained", as copied in the WUDI-Merging README
    # (nathanielyvo/WUDI-Merging, README.md).
    PaperFigure(
        "zero-shot",
        48.0,
        "pretrained",
        "Yang et al. 2024, AdaMerging (ICLR 2024, arXiv 2310.02575), ViT-B/32 table; via the WUDI-Merging README",
    ),
    # Individual 90.5: same table; CART README and Iso (arXiv 2502.04959) Table 4 give 90.5 too.
    PaperFigure(
        "individual fine-tuned models",
        INDIVIDUAL_AVERAGE,
        "experts",
        "Yang et al. 2024, AdaMerging (arXiv 2310.02575), ViT-B/32 table; Iso (arXiv 2502.04959) Table 4",
    ),
    # Task arithmetic 69.1 (Ilharco et al. 2023, lambda chosen on validation): AdaMerging's ViT-B/32 table, via the
    # WUDI-Merging README.
    PaperFigure(
        "task arithmetic",
        69.1,
        "static",
        "Ilharco et al. 2023, Editing Models with Task Arithmetic (ICLR 2023), as reported in the AdaMerging "
        "ViT-B/32 table (arXiv 2310.02575); via the WUDI-Merging README",
    ),
    # TIES-Merging 72.4: same table and source.
    PaperFigure(
        "TIES-Merging",
        72.4,
        "static",
        "Yadav et al. 2023, TIES-Merging (NeurIPS 2023), as reported in the AdaMerging ViT-B/32 table "
        "(arXiv 2310.02575); via the WUDI-Merging README",
    ),
    # Layer-wise AdaMerging++ 81.1 (the best layer-wise variant; plain layer-wise AdaMerging 80.1): the AdaMerging
    # ViT-B/32 table; the repository's log EnnengYang/AdaMerging logs/ViT-B-32 gives 81.15.
    PaperFigure(
        "layer-wise AdaMerging++",
        81.1,
        "adapted",
        "Yang et al. 2024, AdaMerging (ICLR 2024, arXiv 2310.02575), ViT-B/32 table (log: 81.15)",
    ),
    # AdaMerging w/ Surgery 86.1: Representation Surgery's ViT-B/32 result, EnnengYang/RepresentationSurgery
    # src/logs/result-ViT-B-32.md (step 500).
    PaperFigure(
        "AdaMerging + Surgery",
        86.1,
        "routing",
        "Yang et al. 2024, Representation Surgery (ICML 2024, arXiv 2402.02705), ViT-B/32 result "
        "(RepresentationSurgery src/logs/result-ViT-B-32.md)",
    ),
    # WEMoE 89.4 (2-layer router): tanganke/weight-ensembling_MoE results/clip_dictmoe/ViT-B-32/version_1/
    # results.csv, step 1000.
    PaperFigure(
        "WEMoE",
        89.4,
        "routing",
        "Tang et al. 2024, Merging Multi-Task Models via Weight-Ensembling Mixture of Experts (ICML 2024, "
        "arXiv 2402.00433), ViT-B/32 (weight-ensembling_MoE results/clip_dictmoe/ViT-B-32/version_1/results.csv)",
    ),
)


__all__ = ["CATEGORIES", "FIGURES", "INDIVIDUAL_AVERAGE", "SETTING", "PaperFigure"]
