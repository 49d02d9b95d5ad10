"""`microdit sample`: images from a checkpoint (the authors' .pt or our .safetensors) for a few prompts."""
from microdit.arguments import non_negative_float, positive_int
from microdit.eval.commands import add_speed_args
from microdit.sampling import pipeline_from_checkpoint, save_image_grid


def register(subparsers) -> None:
    p = subparsers.add_parser("sample", help="generate an image grid from a checkpoint")
    p.add_argument("--checkpoint", required=True, help="DiT weights: .pt (torch.save state_dict) or .safetensors")
    p.add_argument("--prompt", action="append", required=True, help="a prompt; repeat for several")
    p.add_argument("--out", required=True, help="PNG grid to write")
    p.add_argument("--vae", help="diffusers AutoencoderKL hub id or directory (default: the one our exports record, "
                                 "else the paper's: SDXL's, or ostris/vae-kl-f8-d16 for 16 latent channels)")
    p.add_argument("--text-encoder", help="openclip:<name>, hf:<dir>, minilm (default: the one our exports record, "
                                          "else DFN5B CLIP-H)")
    p.add_argument("--resolution", type=positive_int, help="image size for files without pos_embed (default 512)")
    p.add_argument("--steps", type=positive_int, default=30, help="Heun steps (default 30)")
    p.add_argument("--guidance", type=non_negative_float, default=5.0,
                   help="classifier-free guidance scale; 1 or less: none (default 5.0)")
    p.add_argument("--seed", type=int, default=2024, help="seed of the first image's noise; image i uses seed + i "
                                                            "(default 2024)")
    p.add_argument("--images-per-prompt", type=positive_int, default=1, help="images of each prompt, one grid row "
                                                                             "each (default 1)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    add_speed_args(p)
    p.set_defaults(func=run)


def run(args) -> None:
    latent_res = args.resolution // 8 if args.resolution else None
    model = pipeline_from_checkpoint(args.checkpoint, args.vae, args.text_encoder, latent_res, args.device,
                                     args.precision, args.compile)
    prompts = [p for p in args.prompt for _ in range(args.images_per_prompt)]
    images = model.generate(prompt=prompts, num_inference_steps=args.steps, guidance_scale=args.guidance,
                            seed=args.seed)
    save_image_grid(images, args.out, nrow=args.images_per_prompt if args.images_per_prompt > 1 else None)
    print(f"wrote {args.out} ({len(prompts)} images, {images.shape[-1]} px)")
