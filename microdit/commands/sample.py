"""`microdit sample`: images from a checkpoint (the authors' .pt or our .safetensors) for a few prompts."""
from microdit.arguments import positive_int
from microdit.eval.commands import add_sampling_args, load_pipeline


def register(subparsers) -> None:
    p = subparsers.add_parser("sample", help="generate an image grid from a checkpoint")
    p.add_argument("--prompt", action="append", required=True, help="a prompt; repeat for several")
    p.add_argument("--out", required=True, help="PNG grid to write")
    p.add_argument("--images-per-prompt", type=positive_int, default=1, help="images of each prompt, one grid row "
                                                                             "each (default 1)")
    add_sampling_args(p, shared_out=False)
    p.set_defaults(func=run)


def run(args) -> None:
    from microdit.sampling import save_image_grid

    model = load_pipeline(args)
    prompts = [p for p in args.prompt for _ in range(args.images_per_prompt)]
    images = model.generate(prompt=prompts, num_inference_steps=args.steps, guidance_scale=args.guidance,
                            seed=[args.seed + i for i in range(len(prompts))])
    save_image_grid(images, args.out, nrow=args.images_per_prompt if args.images_per_prompt > 1 else None)
    print(f"wrote {args.out} ({len(prompts)} images, {images.shape[-1]} px)")
