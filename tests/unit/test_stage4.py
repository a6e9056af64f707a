"""Stage-4 pieces: reward routing by prompt pool, what each reward model sees, the preference
schedule, the reward-hacking watch, and the preference data."""

from __future__ import annotations

import json

import pytest
import torch

from pipeline.data.preferences import LOOP_UNITS, embedded_harmlessness, embedded_helpfulness, load_preferences, split
from pipeline.data.sources import DataError
from pipeline.eval.protocol import evaluate_general, prompt_rows
from pipeline.rl.batch import PromptPool, collect, merge
from pipeline.rl.maths import group_advantages
from pipeline.rl.metrics import batch_metrics
from pipeline.rl.rewards import RewardContext, clean_summary, score
from pipeline.rl.rollout import Completion, Sampling
from pipeline.rl.update import UpdateStats
from pipeline.rl.verify import Verifier
from pipeline.rl.watch import general_prompts_at, hacking_watch
from pipeline.run.config import ConfigError, compose
from stages.stage4_align import general_prompts, split_general

RESPONSE = "<think>\nThe user greets me. I should be friendly.\n</think>\n\nHello! How can I help?"


class RecordingRM:
    """Scores by a fixed rule and remembers exactly what it was shown."""

    def __init__(self, value: float):
        self.value, self.seen = value, []

    def __call__(self, prompts, responses):
        self.seen += list(zip(prompts, responses))
        return [self.value] * len(responses)


@pytest.fixture(scope="module")
def verifier():
    v = Verifier(workers=1)
    yield v
    v.close()


def test_helpfulness_sees_only_the_summary_and_harmlessness_everything(verifier):
    helpful, harmless = RecordingRM(0.0), RecordingRM(2.0)
    ctx = RewardContext(verifier=verifier, reward_models={"helpfulness": helpful, "harmlessness": harmless})
    rec = {"id": "g", "question": "Hi!", "answer": None, "task": "general", "entry": None}
    total, parts = score([RESPONSE], [rec], {"helpfulness": 1.0, "harmlessness": 0.5}, ctx)
    assert helpful.seen == [("Hi!", "Hello! How can I help?")]
    assert harmless.seen == [("Hi!", RESPONSE)]
    assert parts["helpfulness"] == [pytest.approx(0.5)]  # σ(0)
    assert parts["harmlessness"][0] == pytest.approx(1 / (1 + 2.718281828**-2), rel=1e-6)
    assert total[0] == pytest.approx(0.5 + 0.5 * parts["harmlessness"][0])


def test_rm_reward_without_a_model_fails_naming_the_key(verifier):
    rec = {"id": "g", "question": "Hi!", "answer": None, "task": "general", "entry": None}
    with pytest.raises(ValueError, match="stage.reward_models.helpfulness"):
        score([RESPONSE], [rec], {"helpfulness": 1.0}, RewardContext(verifier=verifier))


class PoolRollout:
    def generate(self, prompts, sampling, **kw):
        n = sampling.n
        return [
            [
                Completion([1], [0.0], f"<think>\nx\n</think>\n\nThe answer is \\boxed{{{p[0] + j}}}.", False)
                for j in range(n)
            ]
            for p in prompts
        ]


def test_reasoning_prompts_get_rule_rewards_and_general_prompts_reward_models(verifier):
    cfg = compose(
        [
            "stage=stage4",
            "stage.prompts_per_step=2",
            "stage.group_size=2",
            "stage.steps=4",
            "stage.general_last_steps=2",
            "stage.general_prompts_per_step=2",
        ]
    )
    s = cfg.stage
    rm = RecordingRM(1.0)
    ctx = RewardContext(verifier=verifier, reward_models={"helpfulness": rm, "harmlessness": rm})
    reasoning = [{"id": str(i), "question": "q", "answer": str(i), "task": "math", "entry": None} for i in range(4)]
    general = [
        {"id": f"g{i}", "question": f"chat {i}", "answer": None, "task": "general", "entry": None} for i in range(3)
    ]
    pools = [
        PromptPool("reasoning", reasoning, [[i] for i in range(4)], dict(s.rewards), lambda st: 2),
        PromptPool(
            "general",
            general,
            [[10 + i] for i in range(3)],
            dict(s.rm_rewards),
            lambda st: general_prompts_at(st, s),
            seed_offset=7,
        ),
    ]
    for step, expect_general in ((0, False), (2, True)):
        rm.seen.clear()
        batches = [collect(PoolRollout(), p, 0, step, cfg, ctx, 0, 1, [0])[0] for p in pools if p.per_step(step)]
        batch = merge(batches)
        by_pool = {x.pool for x in batch.samples}
        assert by_pool == ({"reasoning", "general"} if expect_general else {"reasoning"})
        for x in batch.samples:
            if x.pool == "reasoning":
                assert set(x.parts) == {"accuracy", "code", "format", "language"}
                assert x.parts["code"] is None  # no tests on a maths prompt: the code reward does not apply
            else:
                assert set(x.parts) == {"helpfulness", "harmlessness"}
        assert all(q.startswith("chat") for q, _ in rm.seen) and (len(rm.seen) > 0) == expect_general
        m = batch_metrics(batch, UpdateStats())
        assert "accuracy" in m and m["accuracy"] == pytest.approx(
            sum(x.parts["accuracy"] for x in batch.samples if x.pool == "reasoning")
            / sum(x.pool == "reasoning" for x in batch.samples)
        )
        if expect_general:
            assert m["reward/helpfulness"] == pytest.approx(1 / (1 + 2.718281828**-1), rel=1e-6)
            assert m["reward/helpfulness_std"] == pytest.approx(0.0) and m["samples/general"] == 4


class SlightlyLongerIsBetterRM:
    """A logit that grows a little with the response's length: σ-scores a few hundredths apart."""

    def __call__(self, prompts, responses):
        return [0.01 * len(r) for r in responses]


class WordyRollout:
    def generate(self, prompts, sampling, **kw):
        return [
            [Completion([1], [0.0], "<think>\nx\n</think>\n\n" + "word " * (j + 1), False) for j in range(sampling.n)]
            for _ in prompts
        ]


def test_a_pools_std_floor_replaces_the_stages_for_its_groups(verifier):
    """Stage-4 gives its general pool `stage.rm_std_floor`; a pool without one uses `adv_std_floor`."""
    cfg = compose(["stage=stage4", "stage.group_size=4", "stage.rm_rewards={helpfulness: 1.0}"])
    ctx = RewardContext(verifier=verifier, reward_models={"helpfulness": SlightlyLongerIsBetterRM()})
    general = [{"id": "g", "question": "chat", "answer": None, "task": "general", "entry": None}]
    advantages = {}
    for floor in (None, 0.02, 0.1):
        pool = PromptPool("general", general, [[1]], {"helpfulness": 1.0}, lambda st: 1, std_floor=floor)
        batch, _ = collect(WordyRollout(), pool, 0, 0, cfg, ctx, 0, 1, [0])
        rewards = torch.tensor([x.reward for x in batch.samples])
        advantages[floor] = torch.tensor([x.advantage for x in batch.samples])
        expect = group_advantages(rewards, 4, std_floor=cfg.stage.adv_std_floor if floor is None else floor)
        torch.testing.assert_close(advantages[floor], expect)
    assert 0 < rewards.std() < 0.02  # answers a word apart in length: σ-scores barely apart
    assert advantages[0.02].abs().max() > 2 * advantages[0.1].abs().max()


def test_schedule_limits_general_prompts_to_the_last_steps():
    cfg = compose(["stage=stage4", "stage.steps=10", "stage.general_last_steps=3", "stage.general_prompts_per_step=4"])
    assert [general_prompts_at(st, cfg.stage) for st in range(10)] == [0] * 7 + [4] * 3


def test_hacking_watch_flags_rm_up_accuracy_down_and_length_collapse():
    good = [
        {"step": i, "accuracy": 0.5 + 0.01 * i, "reward/helpfulness": 0.5 + 0.01 * i, "response_len_mean": 100}
        for i in range(6)
    ]
    w = hacking_watch(good, 3)
    assert w["watch/rm_up_acc_down"] == 0.0 and w["watch/length_collapse"] == 0.0 and w["watch/len_ratio"] == 1.0
    hacked = [
        {
            "step": i,
            "accuracy": 0.6 - 0.05 * i,
            "reward/helpfulness": 0.5 + 0.1 * i,
            "response_len_mean": 100 if i < 3 else 30,
        }
        for i in range(6)
    ]
    w = hacking_watch(hacked, 3)
    assert w["watch/rm_up_acc_down"] == 1.0 and w["watch/rm_slope"] == pytest.approx(0.1)
    assert w["watch/acc_slope"] == pytest.approx(-0.05) and w["watch/length_collapse"] == 1.0
    assert hacking_watch(hacked[:2], 3) == {}  # too little history: no verdict


def test_stage4_config_checks_reward_names():
    with pytest.raises(ConfigError, match="stage.rm_rewards"):
        compose(["stage=stage4", "stage.rm_rewards={helpfulnes: 1.0}"])


def test_general_prompts_come_from_the_chat_asset():
    recs = general_prompts("pipeline/assets/general_chat.jsonl")
    assert len(recs) == 108 and recs[0]["question"] == "Hello!" and recs[0]["answer"] is None
    assert sum(bool(r.get("held_out")) for r in recs) == 32


def test_the_asset_holds_out_the_rows_it_marks(tmp_path):
    recs = general_prompts("pipeline/assets/general_chat.jsonl")
    train, held = split_general(recs, 16)  # the marks win over the count
    assert len(held) == 32 and len(train) == 76 and all(r["held_out"] for r in held)
    assert {r["id"] for r in train}.isdisjoint(r["id"] for r in held)
    assert held[0]["id"] == "general_chat.jsonl:3" and held[-1]["id"] == "general_chat.jsonl:108"
    everything = tmp_path / "all.jsonl"
    everything.write_text('{"held_out": true, "messages": [{"role": "user", "content": "hi"}]}\n')
    with pytest.raises(DataError, match="every general prompt is marked held_out"):
        split_general(general_prompts(str(everything)), 0)


def test_a_file_that_marks_none_holds_out_a_fixed_pick(tmp_path):
    rows = [
        {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}]} for i in range(40)
    ]
    path = tmp_path / "chat.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    recs = general_prompts(str(path))
    train, held = split_general(recs, 16)
    assert len(held) == 16 and len(train) == 24
    assert {r["id"] for r in train}.isdisjoint(r["id"] for r in held)
    assert sorted(r["id"] for r in train + held) == sorted(r["id"] for r in recs)
    assert split_general(recs, 16) == (train, held)  # the same pick on every rank and every resume
    assert held != recs[:16]  # spread over the file, not its first rows
    assert split_general(recs, 0) == (recs, [])
    with pytest.raises(DataError, match="stage.general_eval_prompts"):
        split_general(recs, 40)


class SummaryRollout:
    """Answers prompt [k] with a summary that names k, after a fixed chain of thought."""

    def generate(self, prompts, sampling, **kw):
        assert sampling.temperature == 0 and sampling.n == 1
        return [
            [Completion([1], [0.0], SUMMARY.get(p[0], f"<think>\nthinking\n</think>\n\nanswer {p[0]}"), False)]
            for p in prompts
        ]


SUMMARY = {7: "<think>\nthinking\n</think>\n\n<think>\n\n</think>\n\n<think>\n\n</think>"}  # a tag loop


class LengthRM:
    """Logit = number of characters of what it is shown, minus 8: tells the summary from the whole text."""

    def __call__(self, prompts, responses):
        return [len(r) - 8.0 for r in responses]


def test_general_eval_scores_greedy_answers_with_each_reward_model(verifier):
    recs = [{"id": f"g{k}", "question": f"q{k}", "answer": None, "task": "general", "entry": None} for k in (3, 10)]
    ctx = RewardContext(verifier=verifier, reward_models={"helpfulness": LengthRM(), "harmlessness": LengthRM()})
    metrics, rows = evaluate_general(
        SummaryRollout(), [[3], [10]], recs, ctx, ["harmlessness", "helpfulness"], max_tokens=16, stop_ids=[0]
    )
    sigmoid = lambda x: 1 / (1 + 2.718281828459045**-x)  # noqa: E731
    # helpfulness sees only "answer 3" (8 chars: logit 0) and "answer 10" (logit 1); harmlessness all of it
    assert [r["helpfulness"] for r in rows] == [pytest.approx(0.5), pytest.approx(sigmoid(1.0))]
    full = len("<think>\nthinking\n</think>\n\nanswer 3") - 8.0
    assert rows[0]["harmlessness"] == pytest.approx(sigmoid(full))
    assert [r["id"] for r in rows] == ["g3", "g10"] and rows[1]["greedy"].endswith("answer 10")
    assert metrics["rm/helpfulness"] == pytest.approx((0.5 + sigmoid(1.0)) / 2)
    assert [r["clean"] for r in rows] == [True, True] and metrics["general_clean"] == 1.0
    assert [r["helpfulness_raw"] for r in rows] == [r["helpfulness"] for r in rows]


def test_a_tag_loop_earns_no_helpfulness_whatever_the_rm_says(verifier):
    """stage4_g3: the helpfulness RM scored `<think>\n\n</think>` loops up to 0.8; the gate makes them 0,
    and the eval keeps the RM's own score beside it (helpfulness_raw)."""
    recs = [{"id": f"g{k}", "question": f"q{k}", "answer": None, "task": "general", "entry": None} for k in (7, 10)]
    ctx = RewardContext(verifier=verifier, reward_models={"helpfulness": LengthRM()})
    metrics, rows = evaluate_general(
        SummaryRollout(), [[7], [10]], recs, ctx, ["helpfulness"], max_tokens=16, stop_ids=[0]
    )
    sigmoid = lambda x: 1 / (1 + 2.718281828459045**-x)  # noqa: E731
    loop_summary = "<think>\n\n</think>\n\n<think>\n\n</think>"
    assert [r["clean"] for r in rows] == [False, True]
    assert rows[0]["helpfulness"] == 0.0 and rows[0]["helpfulness_raw"] == pytest.approx(sigmoid(len(loop_summary) - 8))
    assert rows[1]["helpfulness"] == rows[1]["helpfulness_raw"] == pytest.approx(sigmoid(1.0))
    assert metrics["general_clean"] == 0.5 and metrics["rm/helpfulness"] == pytest.approx(sigmoid(1.0) / 2)


def test_clean_summary_wants_one_leading_think_block_and_an_answer():
    assert clean_summary("<think>\nx\n</think>\n\nHello!") and clean_summary("Hello!")  # no CoT is fine
    assert clean_summary("<think>\n\n</think>\n\nHello!")  # R1's empty think for simple queries
    assert not clean_summary("<think>\nx\n</think>\n\n")  # nothing to judge
    assert not clean_summary("<think>\nstill thinking when the tokens ran out")  # unclosed
    assert not clean_summary("<think>\nx\n</think>\n\nHi <think>\n\n</think>")  # a second block
    assert not clean_summary("<think>\n</think>\n\n</think>\n\n</think>")  # a loop of closers


def test_a_rank_without_prompts_still_joins_the_generate_call(verifier):
    """With fewer prompts than ranks, a rank's share is empty; the ranks of one tensor-parallel engine
    must all call generate, so the eval calls it with no prompt rather than skipping it."""
    calls = []

    class Recording:
        def generate(self, prompts, sampling, **kw):
            calls.append(list(prompts))
            return [[Completion([1], [0.0], "x", False)] * sampling.n for _ in prompts]

    ctx = RewardContext(verifier=verifier, reward_models={"helpfulness": LengthRM()})
    metrics, rows = evaluate_general(Recording(), [], [], ctx, ["helpfulness"], max_tokens=8, stop_ids=[0])
    assert calls == [[]] and rows == []
    assert metrics == {"rm/helpfulness": 0.0, "rm/helpfulness_raw": 0.0, "general_clean": 0.0}
    rows = prompt_rows(
        Recording(), [], [], ctx, sampling=Sampling(2, 0.6, 0.95, 8), seed=0, stop_ids=[0], greedy=True, indices=[]
    )
    assert calls == [[], [], []] and rows == []  # greedy, then the sampled answers


def test_embedded_preferences_are_well_formed_and_split_by_prompt():
    pairs = embedded_helpfulness()
    assert len(pairs) > 100 and all(p["chosen"] != p["rejected"] for p in pairs)
    train, held = split(pairs, 0.25)
    assert held and not {p["prompt"] for p in train} & {p["prompt"] for p in held}
    # the policy's failure on chat prompts (a boxed number) is a rejected answer, but only where the
    # right answer has no number: "What is 12 + 3?" answered as a sum is not off task
    templated = [p for p in pairs if p["rejected"].startswith("Evaluating ") and "\\boxed{" in p["rejected"]]
    assert len(templated) > 30 and not any(ch.isdigit() for p in templated for ch in p["chosen"])
    numeric = {p["prompt"] for p in pairs if any(ch.isdigit() for ch in p["chosen"])}
    assert numeric and not numeric & {p["prompt"] for p in templated}
    # one repetition loop per prompt: a unit repeated at least 15 times after at most 5 words of the answer
    loops = [p for p in pairs if any(u * 15 in p["rejected"] for u in LOOP_UNITS)]
    assert len(loops) == len({p["prompt"] for p in pairs}) == 108
    assert all(p["rejected"].split(LOOP_UNITS[0])[0].count(" ") <= 6 for p in loops if LOOP_UNITS[0] in p["rejected"])
    assert embedded_helpfulness() == pairs  # the same set every time (seeded)
    rows = embedded_harmlessness()
    assert {r["safe"] for r in rows} == {True, False}
    assert sum(not r["safe"] for r in rows) == 24


def test_preference_file_missing_field_names_the_line(tmp_path):
    from pipeline.data.sources import DataError

    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a", "chosen": "b"}\n')
    with pytest.raises(DataError, match=r"p.jsonl:2: missing field\(s\) \['rejected'\]"):
        load_preferences("pairwise", str(f))


def test_general_prompts_are_asked_as_stage3_trained_its_general_rows(tiny_model_dir):
    """Stage-3's general rows carry no system turn (the chat template's default); stage-4 asks its
    general prompts the same way, not under the reasoning prompt that asks for a boxed result."""
    from transformers import AutoTokenizer

    from pipeline.data.prompts import chat, encode_prompts

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    reasoning_system = compose(["stage=stage4"]).data.system_prompt
    rec = general_prompts("pipeline/assets/general_chat.jsonl")[0]
    assert chat(rec, reasoning_system) == [{"role": "user", "content": "Hello!"}]
    trained = tok.apply_chat_template(
        [{"role": "user", "content": "Hello!"}], tokenize=False, add_generation_prompt=True
    )
    assert tok.decode(encode_prompts(tok, [rec], reasoning_system)[0]) == trained
    asked = general_prompts("pipeline/assets/general_chat.jsonl", "Be brief.")[0]
    assert chat(asked, reasoning_system)[0] == {"role": "system", "content": "Be brief."}


class SampledRollout:
    """Greedy: `answer`; sampled: sample i of prompt [k] answers with k + i characters. Records the seeds."""

    def __init__(self):
        self.seeds = []

    def generate(self, prompts, sampling, seeds, **kw):
        if sampling.temperature == 0:
            return [[Completion([1], [0.0], "answer", False)] for _ in prompts]
        self.seeds += list(seeds)
        return [[Completion([1], [0.0], "x" * (p[0] + i), False) for i in range(sampling.n)] for p in prompts]


def test_general_eval_adds_the_mean_score_of_sampled_answers(verifier):
    from pipeline.rl.rollout import request_seed

    recs = [{"id": f"g{k}", "question": f"q{k}", "answer": None, "task": "general", "entry": None} for k in (8, 10)]
    ctx = RewardContext(verifier=verifier, reward_models={"helpfulness": LengthRM()})
    rollout = SampledRollout()
    sampling = Sampling(3, 0.6, 0.95, 16)
    metrics, rows = evaluate_general(
        rollout, [[8], [10]], recs, ctx, ["helpfulness"], max_tokens=16, stop_ids=[0], sampling=sampling, seed=5
    )
    sigmoid = lambda x: 1 / (1 + 2.718281828459045**-x)  # noqa: E731
    # prompt [8]: samples of 8, 9, 10 characters -> logits 0, 1, 2; prompt [10]: logits 2, 3, 4
    want = [sum(sigmoid(x) for x in (0, 1, 2)) / 3, sum(sigmoid(x) for x in (2, 3, 4)) / 3]
    assert [r["helpfulness_sampled"] for r in rows] == [pytest.approx(w) for w in want]
    assert [r["helpfulness"] for r in rows] == [pytest.approx(sigmoid(-2.0))] * 2  # the greedy "answer"
    assert metrics["rm/helpfulness_sampled"] == pytest.approx(sum(want) / 2)
    assert rollout.seeds == [request_seed(5, -2, 0), request_seed(5, -2, 1)]  # by prompt index: resumable
