"""Training: the four-stage MicroDiT recipe as a plain PyTorch loop, launched with submitit (see docs/training.md)."""
