"""Evaluation: COCO captions, resumable sampling, clean-fid Fréchet distances, GenEval layout and summary."""
