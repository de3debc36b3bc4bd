"""Optimization passes: plain functions from Graph to Graph, run in PIPELINE order."""
from .cse import cse
from .dce import dce
from .fold import fold_constants
from .simplify import simplify

PIPELINE = (("fold", fold_constants), ("simplify", simplify), ("cse", cse), ("dce", dce),
            ("fold2", fold_constants), ("simplify2", simplify), ("cse2", cse), ("dce2", dce))
PASSES = {"fold": fold_constants, "simplify": simplify, "cse": cse, "dce": dce}
