"""The frontend: the .ad grammar, the parser to a located AST, diagnostics and the prelude."""
