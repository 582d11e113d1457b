"""The benchmark: MFU accounting, the JAX and PyTorch CPU smoke runs, the chunked loss, and the XLA flags."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from olmo_jax import bench, runtime, sharding, train
from olmo_jax.config import load_config
from olmo_jax.loss import loss_terms
from olmo_jax.model import OLMo, flops_per_token, num_params
from olmo_jax.monitor import mfu

REPO = Path(__file__).resolve().parents[1]

# A 2-layer, 64-wide OLMo on the tiny preset's vocabulary (8064 embedding rows), 16-token sequences.
SMOKE_OVERRIDES = {
    "model.n_layers": "2",
    "model.d_model": "64",
    "model.n_heads": "2",
    "data.sequence_length": "16",
    "device_train_microbatch_size": "2",
}
SMOKE = ["--config=tiny", *(f"--config.{key}={value}" for key, value in SMOKE_OVERRIDES.items())]
SMOKE_PARAMS = 647_168  # 2 x (4 x 64^2 + 3 x 64 x 256) + 8064 x 64, the head tied to the embedding
# 6 N + 12 L d T for SMOKE, by hand: per layer 4 d^2 (q, k, v, out) + 3 d h (up, gate, down) with
# d = 64, h = 256; N = 2 x 65,536 + 64 x 8,064 (tied head) = 647,168; 12 L d T = 12 x 2 x 64 x 16.
SMOKE_FLOPS_PER_TOKEN = 6 * 647_168 + 12 * 2 * 64 * 16


def clean_env(devices: int) -> dict[str, str]:
    """A subprocess environment with `devices` fake CPU devices (not the test session's 8)."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


# --------------------------------------------------------------------------------------------------
# MFU accounting
# --------------------------------------------------------------------------------------------------


def test_flops_per_token_is_6n_plus_12ldt_for_olmo_1b_and_7b():
    # Hand-computed from ../shared/notes/olmo-reference.md's formula and shapes (exact integers):
    # 1B: N = 16 x (4 x 2048^2 + 3 x 2048 x 8192) + 2048 x 50304 = 1,176,764,416; 12 L d T = 805,306,368.
    # 7B: N = 32 x (4 x 4096^2 + 3 x 4096 x 11008) + 4096 x 50304 = 6,682,050,560; 12 L d T = 3,221,225,472.
    assert flops_per_token(load_config("1b").model, 2048) == 6 * 1_176_764_416 + 805_306_368 == 7_865_892_864
    assert flops_per_token(load_config("7b").model, 2048) == 6 * 6_682_050_560 + 3_221_225_472 == 43_313_528_832


def test_mfu_of_the_issue_anchor_63k_tokens_per_second_on_an_h100_is_half():
    # 63,000 tokens/s x 7.866 GFLOP/token / 989 TFLOP/s = 0.5011.
    assert mfu(63_000, 7_865_892_864, 989e12) == pytest.approx(63_000 * 7_865_892_864 / 989e12, rel=1e-12)
    assert mfu(63_000, 7_865_892_864, 989e12) == pytest.approx(0.501, abs=1e-3)
    assert mfu(63_000, 7_865_892_864, None) is None  # unknown peak (CPUs): no MFU rather than a made-up one


def test_bench_config_sizes_the_global_batch_for_the_devices_unless_told():
    # The 1b preset's global batch is 2048; the bench times micro-batches of 8 per device instead.
    assert bench.bench_config("1b", {}, num_devices=4, micro_batches=2).global_train_batch_size == 8 * 4 * 2
    explicit = bench.bench_config("1b", {"global_train_batch_size": "64"}, num_devices=4, micro_batches=1)
    assert explicit.global_train_batch_size == 64


# --------------------------------------------------------------------------------------------------
# The JAX bench on CPU (a subprocess: 2 fake devices, and a clean module table to inspect)
# --------------------------------------------------------------------------------------------------

BENCH_DRIVER = """
import json, sys
from olmo_jax import bench
code = bench.main(sys.argv[1:])
print(json.dumps(sorted({name.split(".")[0] for name in sys.modules} & {"grain", "clu", "tensorboardX"})))
sys.exit(code)
"""


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    """One bench run on 2 CPU devices: (record printed, record written to --output, heavy modules imported)."""
    output = tmp_path_factory.mktemp("bench") / "record.json"
    argv = [*SMOKE, "--micro_batches=2", "--steps=2", "--warmup_steps=1", "--json", f"--output={output}"]
    argv.append("--config.peak_flops_per_device=1e12")  # a made-up peak so that CPU runs report an MFU
    argv += ["--config.energy.source=fixed", "--config.energy.fixed_watts=250"]  # a declared power to integrate
    result = subprocess.run(
        [sys.executable, "-c", BENCH_DRIVER, *argv], env=clean_env(2), capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    record_line, imported_line = result.stdout.strip().splitlines()[-2:]
    return json.loads(record_line), json.loads(output.read_text()), json.loads(imported_line)


@pytest.mark.slow
def test_bench_reports_throughput_and_mfu_by_the_formula_on_cpu(bench_run):
    record, written, _ = bench_run
    assert written == record
    # 2 devices x micro-batch 2 x 2 micro-batches = 8 sequences of 16 tokens per step.
    assert (record["num_devices"], record["global_batch_size"], record["seq_len"]) == (2, 8, 16)
    assert (record["micro_batch_size"], record["micro_batches"]) == (2, 2)
    assert record["num_params"] == SMOKE_PARAMS == num_params(load_config("tiny", SMOKE_OVERRIDES).model)
    assert record["flops_per_token"] == SMOKE_FLOPS_PER_TOKEN
    assert record["compile_time_s"] > 0 and record["step_time_s"] > 0
    assert record["tokens_per_second"] == pytest.approx(8 * 16 / record["step_time_s"], rel=1e-9)
    assert record["tokens_per_second_per_device"] == pytest.approx(record["tokens_per_second"] / 2, rel=1e-9)
    expected_mfu = record["tokens_per_second_per_device"] * SMOKE_FLOPS_PER_TOKEN / 1e12
    assert record["mfu"] == pytest.approx(expected_mfu, rel=1e-9)
    assert record["peak_memory_bytes"] is None  # CPUs report no memory statistics
    assert math.isfinite(record["final_loss"])
    assert record["settings"]["attention"] == "xla" and record["settings"]["xla_flags_added"] == []
    # The sampler ran over the timed steps: a constant 250 W integrates exactly; the energy window (sampler
    # start to the last result) is the timed one give or take its start and stop (5% at 2 steps of ~ms).
    assert record["power_w"] == pytest.approx(250, rel=1e-9)
    assert record["energy_per_step_j"] == pytest.approx(250 * record["step_time_s"], rel=0.05)


@pytest.mark.slow
def test_bench_never_imports_grain_clu_or_tensorboardx(bench_run):
    # The GPU machine has none of them: the bench path must run without them.
    assert bench_run[2] == []


def test_bench_rejects_bad_arguments_with_a_one_line_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--config=tiny", "--steps=0"])
    assert exit_info.value.code == 2
    assert "--steps must be at least 1" in capsys.readouterr().err
    assert bench.main(["--config=nope"]) == 2
    assert capsys.readouterr().err.startswith("error: unknown config 'nope'")


def test_table_lists_runs_and_failures_and_compares_same_shaped_runs(tmp_path, capsys):
    shared = {"device_kind": "H100", "num_params": 10, "seq_len": 2048, "global_batch_size": 8, "micro_batch_size": 8}
    records = [
        {**shared, "framework": "jax", "label": "jax-a", "tokens_per_second_per_device": 60_000.0, "mfu": 0.48},
        {**shared, "framework": "torch", "label": "torch-a", "tokens_per_second_per_device": 40_000.0, "mfu": 0.32},
        {"label": "jax-b", "error": "failed: exit 1"},
    ]
    path = tmp_path / "results.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert bench.main(["--table", str(path)]) == 0
    out = capsys.readouterr().out
    assert "| jax-a | jax | H100 | 8 | 2048 |" in out and "| 60,000 | 48.0% |" in out
    assert "| jax-b | failed: exit 1 |" in out
    assert "jax-a / torch-a: 1.50x the tokens/s" in out


# --------------------------------------------------------------------------------------------------
# The PyTorch baseline on CPU
# --------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_torch_baseline_trains_the_same_shapes_on_cpu(tmp_path):
    pytest.importorskip("transformers")
    output = tmp_path / "torch.json"
    argv = [*SMOKE, "--steps=2", "--warmup_steps=1", f"--output={output}"]
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "torch_baseline.py"), *argv],
        env=clean_env(1),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads(output.read_text())
    # The same architecture as olmo_jax (parameter count) and the same FLOP accounting.
    assert record["num_params"] == SMOKE_PARAMS
    assert record["flops_per_token"] == SMOKE_FLOPS_PER_TOKEN
    assert (record["framework"], record["global_batch_size"], record["seq_len"]) == ("torch", 2, 16)
    assert record["settings"]["compile"] is False and record["settings"]["fused_adamw"] is False
    assert record["settings"]["attention"] == "sdpa" and record["settings"]["autocast"] is None  # tiny is fp32
    assert math.isfinite(record["final_loss"]) and record["step_time_s"] > 0


# --------------------------------------------------------------------------------------------------
# The chunked cross-entropy
# --------------------------------------------------------------------------------------------------


def small_model():
    """SMOKE's model with one layer, in fp32: (graphdef, params, model config)."""
    overrides = {**SMOKE_OVERRIDES, "model.n_layers": "1", "model.compute_dtype": "float32"}
    config = load_config("tiny", overrides).model
    graphdef, params = nnx.split(OLMo(config, rngs=nnx.Rngs(0)), nnx.Param)
    return graphdef, params.to_pure_dict(), config


def loss_and_grads(graphdef, params, tokens, chunk):
    """((ce, z), gradients of ce + 0.01 z) for a batch; the z-loss weight is large enough to matter."""

    def objective(params):
        ce, z = loss_terms(graphdef, params, tokens, tokens.shape[0] * (tokens.shape[1] - 1), chunk=chunk)
        return ce + 1e-2 * z, (ce, z)

    (_, terms), grads = jax.jit(jax.value_and_grad(objective, has_aux=True))(params)
    return terms, grads


@pytest.fixture(scope="module")
def plain_loss():
    """The plain loss of a small model on 3 sequences of T = 20 tokens: (graphdef, params, tokens, terms, grads)."""
    graphdef, params, _ = small_model()
    tokens = jax.random.randint(jax.random.key(1), (3, 20), 0, 8000)
    return graphdef, params, tokens, *loss_and_grads(graphdef, params, tokens, None)


@pytest.mark.parametrize("chunk", [7, 64])  # T = 20: 3 chunks, the last padded; one chunk, mostly padding
def test_chunked_cross_entropy_gives_the_plain_loss_and_gradients(plain_loss, chunk):
    graphdef, params, tokens, plain, plain_grads = plain_loss
    chunked, chunked_grads = loss_and_grads(graphdef, params, tokens, chunk)
    # Same fp32 math summed in another order: 1e-5 relative (fp32 rounding over ~60 terms is ~1e-6).
    np.testing.assert_allclose(chunked, plain, rtol=1e-5)
    for name in plain_grads:
        scale = float(jnp.max(jnp.abs(plain_grads[name])))
        np.testing.assert_allclose(chunked_grads[name], plain_grads[name], atol=1e-5 * scale, err_msg=name)


def test_plain_cross_entropy_makes_logits_only_for_positions_with_a_label():
    graphdef, params, config = small_model()
    batch, seq, vocab = 3, 20, config.padded_vocab_size
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
    grad = jax.jit(jax.grad(lambda p, t: loss_terms(graphdef, p, t, 1)[0]))
    program = grad.lower(abstract, jax.ShapeDtypeStruct((batch, seq), jnp.int32)).as_text()
    # Logits for all T positions, sliced afterwards, cost a copy of them and a padded gradient (6% of
    # tiny's CPU step); the last position has no next token, so the LM head never sees it.
    assert f"{batch}x{seq - 1}x{vocab}xf32" in program
    assert f"{batch}x{seq}x{vocab}xf32" not in program


def train_two_steps(mesh_sizes: tuple[int, int, int], chunk: int | None):
    """(ce and z losses, final params) after two steps of a 1-layer SMOKE model with z-loss on a mesh."""
    data, fsdp, tensor = mesh_sizes
    overrides = {
        **SMOKE_OVERRIDES,
        "model.n_layers": "1",
        "model.compute_dtype": "float32",
        "global_train_batch_size": "8",
        "device_train_microbatch_size": "null",
        "softmax_auxiliary_loss": "true",
        "auxiliary_loss_multiplier": "0.01",
        "loss_chunk_size": str(chunk) if chunk else "null",
        "mesh.data": str(data),
        "mesh.fsdp": str(fsdp),
        "mesh.tensor": str(tensor),
    }
    config = load_config("tiny", overrides)
    mesh = sharding.make_mesh(config.mesh, jax.devices()[: data * fsdp * tensor])
    setup = train.build(config, mesh)
    state, step = train.init_state(setup, seed=0), train.jit_train_step(setup)
    rng, losses = np.random.default_rng(0), []
    with jax.set_mesh(mesh):
        for _ in range(2):
            tokens = jax.device_put(rng.integers(0, 8000, (8, 16), dtype=np.int32), setup.batch_sharding)
            state, metrics = step(state, tokens, 2e-3, 1.0)
            losses.append((float(metrics["ce_loss"]), float(metrics["z_loss"])))  # blocks: one step in flight
    return losses, jax.tree.map(np.asarray, state.params)


@pytest.mark.slow
def test_chunked_cross_entropy_trains_like_the_plain_one_on_a_data_fsdp_tensor_mesh():
    # Per device under shard_map: rows split over data x fsdp, the vocabulary over tensor.
    plain_losses, plain_params = train_two_steps((1, 1, 1), None)
    losses, params = train_two_steps((2, 2, 2), 5)
    # Another summation order across devices and chunks: 1e-5 relative, as the train-step mesh tests.
    np.testing.assert_allclose(losses, plain_losses, rtol=1e-5)
    for name in params:
        np.testing.assert_allclose(params[name], plain_params[name], rtol=1e-5, atol=1e-6, err_msg=name)


@pytest.mark.slow
def test_chunked_cross_entropy_never_holds_the_whole_logits():
    graphdef, params, config = small_model()
    # Many short sequences, so that the logits, not the attention matrices, dominate the plain loss's memory.
    batch, seq, vocab = 16, 64, config.padded_vocab_size
    logits_bytes = batch * seq * vocab * 4  # fp32 [B, T, V]: 33 MB here
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
    tokens = jax.ShapeDtypeStruct((batch, seq), jnp.int32)

    def temp_bytes(chunk):
        grad = jax.jit(jax.grad(lambda p, t: loss_terms(graphdef, p, t, 1, chunk=chunk)[0]))
        return grad.lower(abstract, tokens).compile().memory_analysis().temp_size_in_bytes

    # Seen with jaxlib 0.10.2 on CPU: plain 109 MB, chunked 22 MB (a chunk's logits are 4 MB; the rest is
    # parameter-sized buffers such as the embedding's gradient).
    plain, chunked = temp_bytes(None), temp_bytes(8)
    assert plain >= logits_bytes  # the plain loss holds the logits (and their gradient)
    assert chunked < logits_bytes and chunked < plain / 3


# --------------------------------------------------------------------------------------------------
# XLA flags
# --------------------------------------------------------------------------------------------------


def test_user_set_xla_flags_win_and_others_are_added():
    merged = runtime.merged_xla_flags(
        "--xla_gpu_enable_latency_hiding_scheduler=false --xla_dump_to=/tmp/x",
        {"--xla_gpu_enable_latency_hiding_scheduler": "true", "--xla_gpu_enable_pipelined_all_gather": "true"},
    )
    assert merged.split() == [
        "--xla_gpu_enable_latency_hiding_scheduler=false",
        "--xla_dump_to=/tmp/x",
        "--xla_gpu_enable_pipelined_all_gather=true",
    ]


def test_configure_xla_changes_nothing_off_nvidia_gpus(monkeypatch):
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    before = dict(os.environ)
    assert runtime.configure_xla() == []
    assert dict(os.environ) == before


def test_configure_xla_on_nvidia_adds_the_flags_and_memory_fraction_the_user_left_unset(monkeypatch):
    monkeypatch.setattr(runtime, "on_nvidia_gpu", lambda: True)
    env = {"XLA_FLAGS": "--xla_gpu_enable_latency_hiding_scheduler=false"}
    monkeypatch.setattr(os, "environ", env)  # a private environment: nothing leaks into other tests
    added = runtime.configure_xla()
    flags = env["XLA_FLAGS"].split()
    assert flags[0] == "--xla_gpu_enable_latency_hiding_scheduler=false"  # the user's choice stands
    assert len(flags) == len(runtime.GPU_XLA_FLAGS)  # every other flag added once
    assert env["XLA_PYTHON_CLIENT_MEM_FRACTION"] == runtime.GPU_MEMORY_FRACTION
    assert added == flags[1:] + [f"XLA_PYTHON_CLIENT_MEM_FRACTION={runtime.GPU_MEMORY_FRACTION}"]
    assert runtime.configure_xla(enabled=False) == []


@pytest.mark.slow
def test_the_installed_jaxlib_accepts_every_gpu_flag_and_rejects_a_removed_one():
    # XLA aborts at start-up on a flag it does not know, so the check has teeth: a removed flag fails.
    def starts(flags: str) -> bool:
        env = {**clean_env(1), "XLA_FLAGS": flags}
        code = "import jax.numpy as jnp; jnp.zeros(1).block_until_ready()"
        return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=120).returncode == 0

    assert starts(runtime.merged_xla_flags("", runtime.GPU_XLA_FLAGS))
    assert not starts("--xla_gpu_enable_async_collectives=true")  # removed from XLA before jaxlib 0.10


def test_gpu_session_script_commands_all_parse_and_load_their_configs():
    """A GPU lease is short: a mistyped flag in benchmarks/gpu_session.sh must fail here, not there."""
    import importlib.util
    import shlex

    printed = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu_session.sh"), "--print"], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    spec = importlib.util.spec_from_file_location("torch_baseline", REPO / "benchmarks" / "torch_baseline.py")
    torch_baseline = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(torch_baseline)
    frameworks = []
    for line in printed:
        words = shlex.split(line)
        if "olmo_jax.bench" in words:
            argv, parse = words[words.index("olmo_jax.bench") + 1 :], bench.parse_args
            frameworks.append("jax")
        else:
            script = next(i for i, word in enumerate(words) if word.endswith("torch_baseline.py"))
            argv, parse = words[script + 1 :], torch_baseline.parse_args
            frameworks.append("torch")
        _, config_name, overrides = parse(argv)
        config = bench.bench_config(config_name, overrides, num_devices=1, micro_batches=1)
        assert config.sequence_length == 2048, line
    assert frameworks.count("torch") == 1 and frameworks.count("jax") >= 5


def test_the_1b_preset_runs_the_levers_measured_fastest_on_an_h100():
    """README "Performance": cuDNN attention (auto on NVIDIA), no remat, unrolled layers, micro-batch 8."""
    config = load_config("1b")
    assert (config.model.attention_impl, config.model.remat, config.model.scan_layers) == ("auto", "none", False)
    assert config.device_train_microbatch_size == 8


def test_bench_runs_the_olmo2_1b_preset_as_a_cpu_smoke_test():
    # The OLMo-2 block (reordered RMSNorms, QK-norm) through the real train step; shrunk as SMOKE, with GQA
    # and an OLMo-3 window pattern so the grouped scan runs too.
    overrides = {**SMOKE_OVERRIDES, "model.n_heads": "4", "model.n_kv_heads": "2", "model.mlp_hidden_size": "256"}
    overrides["model.sliding_window_pattern"] = "[8, -1]"
    argv = [f"--config={REPO / 'configs' / 'olmo2_1b.yaml'}", *(f"--config.{k}={v}" for k, v in overrides.items())]
    argv += ["--micro_batches=1", "--steps=1", "--warmup_steps=1", "--json"]
    result = subprocess.run(
        [sys.executable, "-c", BENCH_DRIVER, *argv], env=clean_env(1), capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads(result.stdout.strip().splitlines()[-2])
    # Per layer: q 64x64, k and v 64x32 (2 kv heads of 16), out 64x64, up/gate/down 3 x 64x128, then the
    # attn/ff norms (64 each) and q/k norms (64, 32); plus the untied embedding and head, and the final norm.
    per_layer = 64 * 64 + 2 * 64 * 32 + 64 * 64 + 3 * 64 * 128 + 64 + 64 + 64 + 32
    assert record["num_params"] == 2 * per_layer + 2 * 100_352 * 64 + 64
    assert record["tokens_per_second_per_device"] > 0 and np.isfinite(record["final_loss"])
