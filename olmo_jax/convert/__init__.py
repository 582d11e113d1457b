"""Checkpoint conversion between olmo_jax and Hugging Face OLMo (`Olmo`, `Olmo2`, `Olmo3ForCausalLM`) directories.

- `checkpoints`: `to_hf` and `from_hf`, whole run directories ↔ HF directories;
- `hf`: the HF layout: tensor names and shapes, the config, streaming safetensors reads and writes;
- `tokenizer_files`: tokenizer files beside converted weights, for `transformers.AutoTokenizer`;
- `python -m olmo_jax.convert` (`__main__`): the CLI.

Like every package `__init__` of olmo_jax, this one only names the modules: import each name from the module
that defines it (`from olmo_jax.convert.checkpoints import to_hf`).
"""
