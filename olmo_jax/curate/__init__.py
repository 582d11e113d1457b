"""Data curation: Dolma's recipe (language, quality, PII, dedup, decontamination, mixing) on datatrove, ending in
OLMo token files with provenance. `olmo-jax data curate PIPELINE.yaml -o OUT`.

- `spec`: the pipeline YAML, checked before anything runs;
- `steps`: document-level steps (datatrove's Gopher and C4 filters, lingua language ID, PII masking, mixing) and
  the per-source counting wrapper;
- `dedup`: exact, MinHash (datatrove) and paragraph Bloom-filter deduplication;
- `decontamination`: n-gram indices of evaluation tasks and Paloma sets, datatrove's n-gram filter;
- `shards`: reading sources, the shard files between stages, the log of removed documents;
- `pipeline`: planning stages and running them on datatrove's local, SLURM or Ray executor;
- `tokens`: the last stage (`prepare`, provenance tables, report); `provenance`: the tables and their lookup;
- `report`: per step and source, documents and tokens in and out, as JSON and as a table.

Everything but `provenance` needs the `curate` extra (`pip install 'olmo_jax[curate]'`); `provenance` needs numpy
only, so `inspect` reads provenance tables without it.
"""
