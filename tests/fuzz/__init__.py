"""Fuzzing gradc: a program generator, a mutator, the properties, a shrinker and a campaign script."""
