"""Generate from one prompt with every decoding strategy and print what each one cost.

    python examples/generate.py --model runs/blt-d16
    python examples/generate.py --model runs/blt-d16 --prompt "def fibonacci(n):" --max-new-tokens 128

Greedy BLT-S, BLT-DV, prompt lookup and assisted decoding write exactly the autoregressive text with fewer decoder
calls; BLT-D writes several bytes per decoder call and may write different text. The two diffusion strategies need a
BLT-D checkpoint (`config.diffusion_block_size > 0`) and are skipped for a plain BLT; assisted decoding needs a
smaller model to draft (`--assistant-model`) and is skipped without one. Costs are those of `generate`'s output:
decoder calls, encoder+global calls and the paper's estimated memory bandwidth (README, "How it works").
"""

import argparse
import time

from blt_diffusion import DEFAULT_MODEL_DIR, BltDiffusionForCausalLM, BltDiffusionTokenizer
from blt_diffusion.generation_blt_diffusion import DEFAULT_MAX_NEW_TOKENS
from blt_diffusion.strategies_blt_diffusion import DECODING_STRATEGIES

# Every strategy with the options it reads spelled out at their default values, as a starting point for trying others.
STRATEGIES = {name: strategy.option_defaults() for name, strategy in DECODING_STRATEGIES.items()}
COLUMNS = ("decoding", "bytes", "decoder_nfe", "global_nfe", "memory_bandwidth_gb", "acceptance_rate", "bytes/s")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model",
        default=str(DEFAULT_MODEL_DIR),
        help="checkpoint directory, ours or a stock BltForCausalLM's (default: the shipped model)",
    )
    parser.add_argument(
        "--assistant-model", help="a smaller checkpoint that drafts for assisted decoding (default: none, skipped)"
    )
    parser.add_argument("--prompt", default="import os\n\n\ndef ", help="text to continue")
    parser.add_argument("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS, help="bytes to generate")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    model = BltDiffusionForCausalLM.from_pretrained(args.model).eval()
    assistant = None if args.assistant_model is None else BltDiffusionForCausalLM.from_pretrained(args.assistant_model)
    tokenizer = BltDiffusionTokenizer()
    inputs = tokenizer(args.prompt, return_tensors="pt")
    prompt_length = inputs.input_ids.shape[1]
    # One byte first, so that one-off start-up work is not charged to the first strategy's speed.
    model.generate(**inputs, max_new_tokens=1)

    rows = []
    for decoding, options in STRATEGIES.items():
        if not DECODING_STRATEGIES[decoding].runs_on(model.config):
            print(f"--- {decoding}: skipped, the model is not a BLT-D model\n")
            continue
        drafter = {}
        if DECODING_STRATEGIES[decoding].needs_assistant_model:
            if assistant is None:
                print(f"--- {decoding}: skipped, no --assistant-model\n")
                continue
            drafter = {"assistant_model": assistant.eval()}
        start = time.perf_counter()
        output = model.generate(
            **inputs,
            decoding=decoding,
            **options,
            **drafter,
            max_new_tokens=args.max_new_tokens,
            do_sample=False,
            return_dict_in_generate=True,
        )
        seconds = time.perf_counter() - start
        new_ids = output.sequences[0, prompt_length:]
        print(f"--- {decoding}\n{args.prompt}{tokenizer.decode(new_ids, skip_special_tokens=True)}\n")
        # Only the speculative strategies draft bytes, so only they report an acceptance rate.
        acceptance = "-" if output.acceptance_rate is None else f"{float(output.acceptance_rate[0]):.2f}"
        rows.append(
            (
                decoding,
                str(len(new_ids)),
                str(int(output.decoder_nfe[0])),
                str(int(output.global_nfe[0])),
                f"{float(output.memory_bandwidth_gb[0]):.3f}",
                acceptance,
                f"{len(new_ids) / seconds:.0f}",
            )
        )

    table = [COLUMNS, *rows]
    widths = [max(map(len, column)) for column in zip(*table, strict=True)]
    for name, *values in table:
        cells = [name.ljust(widths[0])] + [value.rjust(width) for value, width in zip(values, widths[1:], strict=True)]
        print("  ".join(cells))


if __name__ == "__main__":
    main()
