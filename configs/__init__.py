"""Presets for `--config=NAME`, shipped inside the package as `olmo_jax.configs`."""
