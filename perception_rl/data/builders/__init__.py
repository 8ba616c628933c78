"""TFDS builders, one module each; they need tensorflow-datasets (the `[data]` extra), not TF.

Importing a module registers its builder with TFDS, e.g. `synthetic_perception`.
"""
