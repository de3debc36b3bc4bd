"""The runtime: compiled functions as Python callables, module files, native code loading; it never imports the compiler."""
