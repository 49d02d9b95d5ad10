"""Data pipeline (docs/data.md): sources -> img2dataset-layout shards -> filtered MDS images -> MDS latents ->
the training loader."""
