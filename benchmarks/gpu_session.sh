#!/usr/bin/env bash
# One GPU session, in one go: the JAX train-step benchmark for OLMo-1B (sequence 2048) in several lever
# settings, the PyTorch baseline on the same shapes and card, FP8 projections (`model.fp8`) against bf16
# for OLMo-1B, OLMo-2-1B (its preset's save_dots and scanned layers, at 2048 tokens) and the OLMo-7B
# layer shape with 4 layers, and (time permitting) XLA attention and the chunked cross-entropy: the
# README's Performance table.
# Prints a table; writes to $OUT (or ./bench_out):
#   results.jsonl  one olmo_jax.bench record per run ({"label", "error"} for a run that failed)
#   table.md       the table and the JAX / PyTorch throughput ratios
#   log.txt        everything the runs printed
#
#   benchmarks/gpu_session.sh            run it (about 6 minutes on one H100 before the FP8 rows came)
#   benchmarks/gpu_session.sh --print    print the commands it would run, run nothing
#
# Environment: PYTHON (default python3), STEPS (timed steps, 15), WARMUP (warm-up steps, 3),
# RUN_TIMEOUT (seconds per JAX run, 150; a PyTorch run, which compiles longer, gets 1.6 times that),
# BUDGET (seconds after which no new run starts, 420).
# Wheels in .whl/ at the repository root are installed first; a carried flax must suit the machine's jax
# (flax 0.12.8's NNX fails to import under jax 0.11.2, which runs with flax 0.12.10).
# A run that fails for want of device memory is retried with half the micro-batch. A tiny CPU-sized
# smoke run goes first: if it fails, nothing else is run (the log says why).
set -euo pipefail

usage() { # the comment block at the top of this file
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
}

mode=run
case "${1:-}" in
    "") ;;
    --print) mode=print ;;
    -h | --help)
        usage
        exit 0
        ;;
    *)
        echo "error: unknown argument '$1' (expected --print or --help)" >&2
        exit 2
        ;;
esac

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${OUT:-$repo/bench_out}
python=${PYTHON:-python3}
steps=${STEPS:-15}
warmup=${WARMUP:-3}
run_timeout=${RUN_TIMEOUT:-150}
budget=${BUDGET:-420}
work=$(mktemp -d)
jax_flags=() # flags for every olmo_jax.bench run (--xla_tuning=off if XLA refuses olmo_jax's flags)
trap 'rm -rf "$work"' EXIT

export PYTHONUNBUFFERED=1
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"

# OLMo-1B at 2048 tokens; the 1b preset itself is the fastest setting measured on an H100 (cuDNN
# attention, remat none, unrolled layers), and the other JAX runs change one or two of those levers.
ONE_B_SHAPE=(--config=1b --config.data.sequence_length=2048)
ONE_B=("${ONE_B_SHAPE[@]}" --config.model.attention_impl=cudnn)
OLMO2_1B=(--config=olmo2_1b --config.data.sequence_length=2048 --config.model.attention_impl=cudnn)
SEVEN_B=(--config=7b --config.model.n_layers=4 --config.model.attention_impl=cudnn --config.model.remat=save_dots)
# The runs, in order of importance: label, framework, micro-batch per device, then the config flags.
runs=(
    "1b-cudnn-noremat-unrolled|jax|8|${ONE_B[*]}"
    "1b-torch-sdpa-compile|torch|8|${ONE_B_SHAPE[*]}"
    "1b-cudnn-noremat-unrolled-fp8|jax|8|${ONE_B[*]} --config.model.fp8=true"
    "olmo2-1b-cudnn|jax|8|${OLMO2_1B[*]}"
    "olmo2-1b-cudnn-fp8|jax|8|${OLMO2_1B[*]} --config.model.fp8=true"
    "7b-shape-4-layers|jax|4|${SEVEN_B[*]}"
    "7b-shape-4-layers-fp8|jax|4|${SEVEN_B[*]} --config.model.fp8=true"
    "1b-cudnn-noremat-scan|jax|8|${ONE_B[*]} --config.model.scan_layers=true"
    "1b-cudnn-savedots-scan|jax|8|${ONE_B[*]} --config.model.remat=save_dots --config.model.scan_layers=true"
    "1b-cudnn-savedots-unrolled|jax|8|${ONE_B[*]} --config.model.remat=save_dots"
    "1b-cudnn-noremat-unrolled-mb12|jax|12|${ONE_B[*]}"
    "1b-xla-noremat-scan|jax|8|${ONE_B_SHAPE[*]} --config.model.attention_impl=xla --config.model.scan_layers=true"
    "1b-cudnn-noremat-scan-chunked-ce|jax|8|${ONE_B[*]} --config.model.scan_layers=true --config.loss_chunk_size=512"
)

command_for() { # framework micro-batch label config-flags... -> the command, one word per line
    local framework=$1 micro=$2 label=$3
    shift 3
    if [[ $framework == jax ]]; then
        printf '%s\n' "$python" -m olmo_jax.bench "${jax_flags[@]}"
    else
        printf '%s\n' "$python" "$repo/benchmarks/torch_baseline.py"
    fi
    printf '%s\n' "$@" "--config.device_train_microbatch_size=$micro" "--steps=$steps" "--warmup_steps=$warmup" \
        "--label=$label" "--output=$work/$label.json"
}

record_failure() { # label message: a record that the table shows in place of a result
    printf '{"label": "%s", "error": "%s"}\n' "$1" "$2" >>"$out/results.jsonl"
}

run_one() { # label framework micro-batch config-flags (one string)
    local label=$1 framework=$2 micro=$3 flags=$4 status=0 limit=$run_timeout
    local -a config_flags cmd
    if [[ $framework == torch ]]; then
        limit=$((run_timeout * 8 / 5))
    fi
    read -r -a config_flags <<<"$flags"
    mapfile -t cmd < <(command_for "$framework" "$micro" "$label" "${config_flags[@]}")
    if [[ $mode == print ]]; then
        printf '%q ' timeout "$limit" "${cmd[@]}"
        printf '\n'
        return 0
    fi
    if ((SECONDS > budget)); then
        echo "== $label: skipped, the time budget of ${budget} s is spent" | tee -a "$out/log.txt"
        record_failure "$label" "skipped: the time budget was spent"
        return 0
    fi
    echo "== $label (${SECONDS} s into the session): ${cmd[*]}" | tee -a "$out/log.txt"
    timeout --kill-after=10 "$limit" "${cmd[@]}" >"$work/$label.log" 2>&1 || status=$?
    cat "$work/$label.log" >>"$out/log.txt"
    if ((status == 0)); then
        cat "$work/$label.json" >>"$out/results.jsonl"
        tail -n 3 "$work/$label.log" # the run's summary
    elif ((status != 124 && micro > 1)) && grep -q -i -E 'RESOURCE_EXHAUSTED|out of memory' "$work/$label.log"; then
        echo "== $label failed (exit $status); retrying with micro-batch $((micro / 2))" | tee -a "$out/log.txt"
        run_one "$label-mb$((micro / 2))" "$framework" "$((micro / 2))" "$flags"
        record_failure "$label" "failed: exit $status at micro-batch $micro (see log.txt)"
    else
        echo "== $label failed (exit $status)" | tee -a "$out/log.txt"
        record_failure "$label" "failed: exit $status (see log.txt; 124 is the ${limit} s timeout)"
    fi
}

if [[ $mode == run ]]; then
    mkdir -p "$out"
    : >"$out/results.jsonl"
    : >"$out/log.txt"
    if compgen -G "$repo/.whl/*.whl" >/dev/null; then
        echo "== installing carried wheels: $(cd "$repo/.whl" && echo ./*.whl)" | tee -a "$out/log.txt"
        "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target "$work/site" "$repo"/.whl/*.whl >>"$out/log.txt" 2>&1
        export PYTHONPATH="$repo:$work/site${PYTHONPATH#"$repo"}"
    fi
    {
        nvidia-smi -L || true
        "$python" -c 'import jax, flax, optax, torch, transformers
import orbax.checkpoint
print("jax", jax.__version__, "flax", flax.__version__, "optax", optax.__version__,
      "orbax-checkpoint", orbax.checkpoint.__version__,
      "torch", torch.__version__, "transformers", transformers.__version__)'
    } 2>&1 | tee -a "$out/log.txt"
    # An XLA flag that this jaxlib does not know aborts the backend's start; then run without the flags.
    if ! "$python" -c 'from olmo_jax.runtime import configure_xla
print("XLA settings:", configure_xla())
import jax
print("jax devices:", jax.devices())' >>"$out/log.txt" 2>&1; then
        echo "== olmo_jax.runtime's XLA flags were refused (see log.txt); JAX runs use --xla_tuning=off" |
            tee -a "$out/log.txt"
        jax_flags=(--xla_tuning=off)
    fi
    tail -n 2 "$out/log.txt"
    smoke=(--config=tiny --config.data.sequence_length=64 --steps=2 --warmup_steps=1)
    if ! "$python" -m olmo_jax.bench "${jax_flags[@]}" "${smoke[@]}" >>"$out/log.txt" 2>&1; then
        echo "== the smoke run failed; nothing else is run. The end of log.txt:"
        tail -n 25 "$out/log.txt"
        exit 1
    fi
fi

for entry in "${runs[@]}"; do
    IFS='|' read -r label framework micro flags <<<"$entry"
    run_one "$label" "$framework" "$micro" "$flags"
done

if [[ $mode == run ]]; then
    echo
    "$python" -m olmo_jax.bench --table "$out/results.jsonl" | tee "$out/table.md"
    echo "(${SECONDS} s; records in $out/results.jsonl, output in $out/log.txt)"
fi
