"""Speed and memory measurements of MicroDiT at the paper's shapes (`microdit bench`)."""
