"""`microdit checkpoint info PATH`: what a checkpoint is, after a strict load; non-zero with one line if unusable."""
import json

from microdit.arguments import positive_int
from microdit.checkpoint import load_dit


def register(subparsers) -> None:
    p = subparsers.add_parser("checkpoint", help="inspect checkpoints")
    sub = p.add_subparsers(dest="checkpoint_command", required=True, metavar="SUBCOMMAND")
    info = sub.add_parser("info", help="architecture, channels, resolution, parameter count, EMA or raw, format")
    info.add_argument("path", help="a checkpoint: .safetensors (ours) or .pt (the authors')")
    info.add_argument("--resolution", type=positive_int,
                      help="image size assumed for files without pos_embed (default 512)")
    info.add_argument("--json", action="store_true", help="one JSON object instead of lines")
    info.set_defaults(func=run_info)


def describe(path: str, resolution: int | None = None) -> dict:
    arch, dit, metadata = load_dit(path, latent_res=resolution // 8 if resolution else None)
    cfg = dit.config
    kind = metadata.get("kind", "unknown (the file does not say)")
    return {
        "path": path,
        "format": (f"torch.save (microdit {metadata['container']})" if "container" in metadata else
                   "safetensors (microdit)" if metadata.get("format") == "microdit" else metadata["format"]),
        "architecture": arch,
        "latent_channels": cfg.in_channels,
        "caption_channels": cfg.caption_channels,
        "resolution": cfg.input_size * int(metadata.get("vae_downsample", 8)),
        "resolution_with": (f"the recorded VAE's downsampling x{metadata['vae_downsample']}"
                            if "vae_downsample" in metadata else "an f8 VAE (not recorded in the file)"),
        "vae": metadata.get("vae", "not recorded"),
        "text_encoder": metadata.get("text_encoder", "not recorded"),
        "latent_res": cfg.input_size,
        "pos_interp_scale": cfg.pos_interp_scale,
        "resolution_from": metadata["resolution_from"],
        "parameters": sum(p.numel() for p in dit.parameters()),
        "weights": kind,
    }


def run_info(args) -> None:
    info = describe(args.path, args.resolution)
    if args.json:
        print(json.dumps(info))
        return
    for key, value in info.items():
        print(f"{key:>17}: {value:,}" if isinstance(value, int) else f"{key:>17}: {value}")
