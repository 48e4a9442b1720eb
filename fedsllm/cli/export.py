"""`fedsllm export RUN_DIR OUT_DIR`: a finished run -> one standard PEFT adapter.

Argument parsing only; the work is `fedsllm.model.export.export_run`, imported
when the command runs so that `fedsllm --help` stays fast.
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="merge a run's client and server adapters into one PEFT adapter",
        description=(
            "Rebuild the run's base model from RUN_DIR/scenario.json and write one PEFT "
            "adapter for the whole model to OUT_DIR (adapter_config.json, "
            "adapter_model.safetensors), a tokenizer that AutoTokenizer loads and that "
            "puts training's bos in front, and a model card (README.md: run, base, "
            "scenario, losses from RUN_DIR/summary.json, how to load); for a preset base "
            "also OUT_DIR/base, loadable with AutoModelForCausalLM.from_pretrained. "
            "Prints OUT_DIR."
        ),
    )
    parser.add_argument("run_dir", help="run directory written by `fedsllm run`")
    parser.add_argument("out_dir", help="output directory (created if missing)")
    parser.set_defaults(func=_export)


def _export(args: argparse.Namespace) -> int:
    from fedsllm.model.export import export_run

    out_dir = export_run(args.run_dir, args.out_dir)
    print(out_dir)
    return 0
