"""The PyTorch side of the throughput comparison: transformers' OlmoForCausalLM trained on the same shapes.

    python benchmarks/torch_baseline.py --config=1b --steps=20 --json       # CUDA: SDPA, bf16 autocast, fused
                                                                            # AdamW, torch.compile
    python benchmarks/torch_baseline.py --config=tiny --config.data.sequence_length=64 --steps=3   # CPU smoke test

The model comes from an olmo_jax preset through olmo_jax's HF config mapping, so both benchmarks time the
same architecture, batch and sequence length; the record (fields, MFU formula) is `olmo_jax.bench`'s, so
`python -m olmo_jax.bench --table` puts both in one table. One device only (the first CUDA device, or
the CPU). Mixed precision follows `model.compute_dtype`: bfloat16 means fp32 parameters and optimizer
state with bf16 autocast, as OLMo trains. Each step: forward and backward over the micro-batches,
gradient clipping at `max_grad_norm`, AdamW. The first warm-up step (one runs even with --warmup_steps=0)
includes torch.compile's compilation and is reported as the compile time.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from typing import Any

import torch
import transformers

from olmo_jax import cli
from olmo_jax.bench import (
    add_run_arguments,
    bench_config,
    check_run_arguments,
    emit,
    make_record,
    progress,
)
from olmo_jax.config import TrainConfig
from olmo_jax.convert.hf import hf_config_dict
from olmo_jax.errors import ConfigError
from olmo_jax.model import flops_per_token
from olmo_jax.monitor import PEAK_FLOPS


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, str | None, dict[str, str]]:
    config_name, overrides, rest, _ = cli.parse_command_line(argv)
    parser = cli.ArgumentParser(
        prog="python benchmarks/torch_baseline.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_run_arguments(parser)
    parser.add_argument(
        "--device", choices=("auto", "cuda", "cpu"), default="auto", help="where to train (default: cuda if present)"
    )
    parser.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="wrap the model in torch.compile (default: on for CUDA, off for CPU)",
    )
    parser.add_argument(
        "--fused",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="use the fused CUDA AdamW kernel (default: on for CUDA; CPU never)",
    )
    args = parser.parse_args(rest)
    if config_name is None:
        parser.error("--config=NAME|PATH is required")
    check_run_arguments(parser, args)
    return args, config_name, overrides


def build_model(config: TrainConfig, device: torch.device) -> transformers.OlmoForCausalLM:
    """An fp32 OlmoForCausalLM with `config.model`'s shapes and SDPA attention (random init; speed only)."""
    hf = hf_config_dict(config.model, "float32")
    for key in ("architectures", "model_type"):
        hf.pop(key, None)
    hf["use_cache"] = False
    with device:  # parameters are created on the device: no host-side copy of a billion-parameter model
        model = transformers.OlmoForCausalLM(transformers.OlmoConfig(**hf, attn_implementation="sdpa"))
    return model.to(dtype=torch.float32).train()


def peak_flops(config: TrainConfig, device: torch.device) -> float | None:
    """`peak_flops_per_device` from the config, else the dense bf16 peak of a known GPU, else None."""
    if config.peak_flops_per_device:
        return config.peak_flops_per_device
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device).upper()
    return next((flops for kind, flops in PEAK_FLOPS.items() if kind in name), None)


def run(config: TrainConfig, args: argparse.Namespace, device: torch.device, label: str) -> dict[str, Any]:
    """Time `args.steps` train steps of `config` on synthetic tokens; return an `olmo_jax.bench` record."""
    on_cuda = device.type == "cuda"
    use_compile = on_cuda if args.compile is None else args.compile
    fused = on_cuda if args.fused is None else args.fused
    if fused and not on_cuda:
        raise ConfigError("--fused needs a CUDA device")
    autocast = config.model.compute_dtype == "bfloat16"
    if config.model.compute_dtype == "float16":
        raise ConfigError("model.compute_dtype=float16 is not supported by the baseline (it would need a grad scaler)")
    if on_cuda:
        # fp32 matmuls outside autocast (the loss) may use TF32, as XLA does on the GPU by default.
        torch.set_float32_matmul_precision("high")

    torch.manual_seed(config.seed)
    seq = config.sequence_length
    batch = config.global_train_batch_size
    micro = config.device_train_microbatch_size or batch
    if batch % micro:
        raise ConfigError(f"global_train_batch_size={batch} is not divisible by device_train_microbatch_size={micro}")
    n_micro = batch // micro
    progress(f"torch: {label}: building the model ({batch} x {seq} tokens, {n_micro} micro-batches) on {device}")
    model = build_model(config, device)
    num_params = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=config.optimizer.learning_rate,
        betas=tuple(config.optimizer.betas),
        eps=config.optimizer.eps,
        weight_decay=config.optimizer.weight_decay,
        fused=fused,
    )
    forward = torch.compile(model) if use_compile else model
    generator = torch.Generator(device=device).manual_seed(config.seed)
    tokens = torch.randint(0, config.model.vocab_size, (n_micro, micro, seq), device=device, generator=generator)

    def train_step() -> torch.Tensor:
        total = torch.zeros((), device=device)
        for micro_tokens in tokens:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                loss = forward(input_ids=micro_tokens, labels=micro_tokens).loss / n_micro
            loss.backward()
            total += loss.detach()
        if config.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return total

    def synchronize() -> None:
        if on_cuda:
            torch.cuda.synchronize(device)

    progress(f"torch: {label}: first step{' (torch.compile)' if use_compile else ''}")
    start = time.perf_counter()
    train_step()
    synchronize()
    compile_time = time.perf_counter() - start
    progress(f"torch: {label}: first step took {compile_time:.1f} s; {max(args.warmup_steps - 1, 0)} more warm-up")
    for _ in range(args.warmup_steps - 1):
        train_step()
    synchronize()
    progress(f"torch: {label}: timing {args.steps} steps")
    start = time.perf_counter()
    for _ in range(args.steps):
        loss = train_step()
    synchronize()
    step_time = (time.perf_counter() - start) / args.steps
    final_loss = float(loss)
    if not math.isfinite(final_loss):
        progress(f"torch: {label}: warning: the loss is {final_loss}; the timing may not reflect real training")

    return make_record(
        framework="torch",
        label=label,
        config=config,
        device_kind=torch.cuda.get_device_name(device) if on_cuda else "cpu",
        num_devices=1,
        num_params=num_params,
        flops_per_token=flops_per_token(config.model, seq),
        peak_flops=peak_flops(config, device),
        compile_time_s=compile_time,
        step_time_s=step_time,
        steps=args.steps,
        warmup_steps=args.warmup_steps,
        micro_batch_size=micro,
        micro_batches=n_micro,
        peak_memory=torch.cuda.max_memory_allocated(device) if on_cuda else None,
        final_loss=final_loss,
        settings={
            "attention": model.config._attn_implementation,
            "compile": use_compile,
            "fused_adamw": fused,
            "autocast": "bfloat16" if autocast else None,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
    )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    return cli.run_command(lambda: _run(argv), debug=cli.debug_enabled("--debug" in argv))


def _run(argv: list[str]) -> int:
    args, config_name, overrides = parse_args(argv)
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    elif args.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device=cuda but torch sees no CUDA device")
    else:
        device = torch.device(args.device)
    config = bench_config(config_name, overrides, 1, args.micro_batches)
    label = args.label or f"{config_name}-torch"
    record = run(config, args, device, label)
    emit(record, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
