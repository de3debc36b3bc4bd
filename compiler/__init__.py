"""The compiler: graph IR, op registry, lowering from the AST, autodiff, passes, the NumPy evaluator and the CPU backend."""
