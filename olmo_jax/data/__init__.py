"""The data pipeline: tokenizers, `prepare` (text → OLMo token files), instances, OLMo's global order, the
Grain/JAX training loader, `inspect`, and the built-in demo corpus.

Modules: `tokenizer` (load and train tokenizers), `prepare` (tokenize documents into token files),
`source` (token files → fixed-length instances), `order` (global order and batch plan), `pipeline` (the
host-side batches, state and fingerprints, no JAX), `loader` (Grain prefetch and global `jax.Array`s),
`inspect` (batch N from the config), `builtin` (the offline demo corpus). Command line: `python -m olmo_jax.data`.
"""
