"""`olmo-jax generate` (= python -m olmo_jax.generate): continue prompts with a checkpoint or HF OLMo model.

olmo-jax generate --model=runs/tiny --prompt="def main(" --max_new_tokens=64 [--temperature=0.8 --top_p=0.95]
olmo-jax generate --model=hf_dir --prompts=prompts.jsonl --stop=$'\\n\\n' -o completions.jsonl
olmo-jax generate --model=runs/sft_tiny --prompt="What is the Python module json for?"   # as a user turn

A model fine-tuned by olmo_jax (or an HF directory carrying one of its chat templates) gets each prompt as
a user turn of its chat template, answered from `<|assistant|>`; `--chat_template=none` turns that off.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

from olmo_jax import atomic, cli
from olmo_jax.adapt.chat import TEMPLATES, encode_chat
from olmo_jax.generate.decoding import Sampling, cut_at_stop, generate, stop_strings
from olmo_jax.jsonl import read_string_field
from olmo_jax.model import DTYPES
from olmo_jax.pretrained import from_pretrained


def read_prompts(path: str) -> list[str]:
    """Prompts from a JSON-lines file: one `{"prompt": "..."}` per line (blank lines skipped)."""
    return read_string_field(path, "prompt", what="prompts")


def chat_prompt(tokenizer, prompt: str, template: str) -> list[int]:
    """`prompt` as a user turn of `template`, ending where the assistant's answer starts."""
    messages = [{"role": "user", "content": prompt}]
    return encode_chat(tokenizer, messages, template, add_generation_prompt=True)[0].tolist()


def main(argv: Sequence[str] | None = None, prog: str = "python -m olmo_jax.generate") -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    return cli.run_command(lambda: _run(argv, prog), debug=cli.debug_enabled("--debug" in argv))


def _run(argv: list[str], prog: str) -> int:
    parser = cli.ArgumentParser(
        prog=prog,
        description="Continue text prompts with a checkpoint or an HF OLMo directory (greedy unless "
        "--temperature > 0). Prints one JSON line per prompt to stdout (or --output): prompt, completion, "
        "new token count, stop reason.",
    )
    parser.add_argument("--model", required=True, help="olmo_jax run dir / checkpoint step, or an HF OLMo directory")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", action="append", help="a prompt (repeatable)")
    source.add_argument("--prompts", metavar="FILE.jsonl", help='a JSON-lines file of {"prompt": "..."} rows')
    parser.add_argument("--max_new_tokens", type=int, default=Sampling.max_new_tokens, help="at most this many tokens")
    parser.add_argument("--temperature", type=float, default=Sampling.temperature, help="0: greedy (default)")
    parser.add_argument("--top_p", type=float, default=Sampling.top_p, help="nucleus sampling mass (1: off)")
    parser.add_argument("--seed", type=int, default=Sampling.seed, help="sampling seed (same seed, same text)")
    parser.add_argument("--stop", action="append", default=[], help="a stop string (repeatable); cut from the output")
    parser.add_argument("--batch_size", type=int, default=8, help="prompts generated together")
    parser.add_argument(
        "--chat_template",
        choices=("auto", "none", *TEMPLATES),
        default="auto",
        help="wrap each prompt as a user turn of this chat template; auto (default): the one the model was "
        "fine-tuned with, none for a pretrained model",
    )
    parser.add_argument("--compute_dtype", choices=sorted(DTYPES), help=cli.COMPUTE_DTYPE_HELP)
    cli.add_output_argument(parser, "write the JSON lines to this file (atomically) instead of stdout")
    cli.add_debug_argument(parser)
    args = parser.parse_args(cli.normalize_flags(a for a in argv if a != "--debug"))
    if args.batch_size < 1:
        parser.error(f"--batch_size={args.batch_size} must be at least 1")
    sampling = Sampling(args.max_new_tokens, args.temperature, args.top_p, args.seed)
    sampling.validate()
    prompts = args.prompt if args.prompt else read_prompts(args.prompts)

    pretrained = from_pretrained(args.model, compute_dtype=args.compute_dtype)
    tokenizer = pretrained.tokenizer()
    template = pretrained.chat_template if args.chat_template == "auto" else args.chat_template
    stop = stop_strings(tokenizer.decode, args.stop)
    rows = []
    for start in range(0, len(prompts), args.batch_size):
        batch = prompts[start : start + args.batch_size]
        if template in (None, "none"):
            encoded = tokenizer.encode_batch(batch)
        else:
            encoded = [chat_prompt(tokenizer, prompt, template) for prompt in batch]
        new = generate(pretrained.model, encoded, sampling, stop=stop)
        for prompt, tokens in zip(batch, new, strict=True):
            text, reason = cut_at_stop(tokenizer.decode(tokens), args.stop)
            if reason is None:
                reason = "length" if len(tokens) == sampling.max_new_tokens else "eos"
            rows.append({"prompt": prompt, "completion": text, "new_tokens": len(tokens), "stop": reason})
        print(f"generated {min(start + args.batch_size, len(prompts))}/{len(prompts)}", file=sys.stderr, flush=True)
    lines = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    if args.output:
        atomic.write_text(args.output, lines)
    else:
        sys.stdout.write(lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
