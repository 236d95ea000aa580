"""`kvsched model export`: write the engine's model as a Hugging Face folder (the work is in
kvsched.engine.export)."""

from __future__ import annotations

from pathlib import Path


def add_parser(sub) -> None:
    """Add the `model` subcommand (and its `export` action) to the CLI's subparsers."""
    m = sub.add_parser("model", help="model files: export the engine's model as a Hugging Face folder "
                                     "(loadable by transformers and vLLM)")
    actions = m.add_subparsers(dest="model_action", metavar="ACTION", required=True)
    ex = actions.add_parser("export", help="write config.json, model.safetensors and tokenizer files to a folder")
    ex.add_argument("--model", default="default",
                    help="a .gguf file, a Hugging Face Llama folder, or 'default' (the shipped "
                         "SmolLM2-135M-Instruct GGUF; the default)")
    ex.add_argument("--output", "-o", type=Path, required=True, metavar="DIR", help="folder to write")
    ex.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32",
                    help="weight precision in model.safetensors (float32: exactly the engine's weights)")
    ex.add_argument("--force", action="store_true", help="write into a non-empty folder, replacing the model files")
    ex.set_defaults(func=cmd_model_export)


def cmd_model_export(args) -> int:
    from kvsched.cli import CLIError

    try:
        from kvsched.engine.export import export_checkpoint
    except ImportError as exc:
        raise CLIError(f"exporting needs the engine extra (torch, gguf, tokenizers, safetensors): {exc}") from None
    source = None if args.model in (None, "default") else args.model
    try:
        out = export_checkpoint(source, args.output, dtype=args.dtype, overwrite=args.force)
    except (FileNotFoundError, FileExistsError, NotADirectoryError, ValueError, ImportError) as exc:
        raise CLIError(str(exc)) from None
    print(f"wrote {out} (config.json, model.safetensors, tokenizer files; {args.dtype})")
    return 0
