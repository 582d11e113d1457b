"""The data pipeline: tokenizers, `prepare` (text → OLMo token files), instances, OLMo's global order, the
Grain/JAX training loader, `inspect`, and the built-in demo corpus.

Modules, lowest layer first:
- `spec`: `DataSpec`, what the pipeline takes from a run's config (`olmo_jax.config.data_spec` builds it);
- `tokenizer_formats`: the `Tokenizer` interface over HF JSON and SentencePiece files, SentencePiece training;
- `source`: token files → fixed-length instances; `order`: OLMo's global order and the batch plan;
- `token_writer`: documents → token files (`write_token_files`);
- `builtin`: the offline demo corpus and its tokenizer, built on first use;
- `tokenizer`: `load_tokenizer(identifier)`: paths, `owner/name` and "builtin";
- `prepare`: read documents and tokenize them into token files with a manifest;
- `pipeline`: the host-side batches, state and fingerprints (no JAX); `loader`: Grain prefetch and global
  `jax.Array`s; `inspect`: batch N from a run's config;
- `python -m olmo_jax.data` (`__main__`): the command line.

Like every package `__init__` of olmo_jax, this one only names the modules: import each name from the module
that defines it.
"""
