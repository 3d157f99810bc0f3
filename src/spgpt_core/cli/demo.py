"""``spgpt demo``: the main job on a generated sample slide.

Heavy modules are imported inside each command so ``spgpt --help`` stays fast.
"""

from __future__ import annotations

from ..progress import TqdmProgress


def cmd_demo(args) -> None:
    from ..demo import run_demo


    run_demo(args.out, model=args.model, seed=args.seed, overwrite=args.overwrite,
             mapping_epochs=args.mapping_epochs, progress=TqdmProgress(disable=args.quiet, unit="cell"))


def register(sub) -> None:
    p = sub.add_parser("demo", help="run spgpt end to end on a generated sample slide",
                       description="Generate a Visium-like slide with planted domains, cell-type mixtures and a "
                       "tissue image, run the model on it and score the results against the truth.")
    p.add_argument("--out", default="spgpt_demo", help="output folder (default: %(default)s)")
    p.add_argument("--model", default="default", help="model (default: the shipped model)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="reuse a non-empty output folder")
    p.add_argument("--mapping-epochs", type=int, default=None, metavar="N",
                   help="epochs of every Tangram-style mapping (default: 300; fewer is faster and rougher)")
    p.set_defaults(func=cmd_demo)
