"""Data pipeline: sources -> img2dataset-style webdataset shards -> filtered MDS images -> MDS latents -> loader.

  sources/     one module per dataset; each `download` writes the img2dataset webdataset layout
  shards.py    that layout: <id>.tar (<key>.jpg/.txt/.json) + <id>_stats.json as the "shard finished" marker
  synthetic.py procedural shapes with compositional captions (offline, deterministic)
  convert.py   SPEC §4.1 size filter + resize into MDS image shards, parallel by worker, merged index
  precompute.py VAE + text latents into an MDS latents dataset, restartable per input shard
  loader.py    StreamingDataset over several latents datasets for training
"""
