"""The run report: one self-contained HTML page of curves, sample grids, scores and costs."""
