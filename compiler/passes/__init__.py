"""Optimization passes: plain functions from Graph to Graph, run in PIPELINE order."""
from .cse import cse
from .dce import dce
from .fold import fold_constants
from .simplify import simplify
from .sums import sum_transposed
from ..control import prune_loops
from ..hoist import hoist_products

PIPELINE = (("fold", fold_constants), ("simplify", simplify), ("sums", sum_transposed), ("cse", cse), ("loops", prune_loops), ("hoist", hoist_products), ("dce", dce),
            ("fold2", fold_constants), ("simplify2", simplify), ("cse2", cse), ("loops2", prune_loops), ("dce2", dce))
PASSES = {"fold": fold_constants, "simplify": simplify, "cse": cse, "dce": dce, "loops": prune_loops,
          "sums": sum_transposed, "hoist": hoist_products}
