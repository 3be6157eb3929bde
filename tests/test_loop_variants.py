"""Loop-side GRPO variants on hand-built inputs: batch filters, KL watch, overlong penalty, a learned
reward model, and their config knobs."""

from __future__ import annotations

import math

import pytest
import torch
from hydra.utils import instantiate

from grpo_cli.algo.kl_watch import AdaptiveKLController, KLWatch
from grpo_cli.config.validate import ConfigError, validate
from grpo_cli.rewards import RewardResult, Rewards
from grpo_cli.rewards.overlong import OverlongPenalty
from grpo_cli.rollout.filters import DynamicSampling, KeepAll, ScoredGroups, SkipZeroStd
from grpo_cli.rollout.prompts import PromptBatch
from grpo_cli.rollout.sampler import Rollouts
from tests.conftest import compose

G = 2


def groups(rewards: list[list[float]], tag: str) -> ScoredGroups:
    """One ScoredGroups with a group per row of `rewards`; texts name their group and draw."""
    n = len(rewards) * G
    texts = [f"{tag}{i // G}.{i % G}" for i in range(n)]
    total = torch.tensor(rewards, dtype=torch.float32).flatten()
    return ScoredGroups(
        prompts=[f"{tag}{i // G}" for i in range(n)], columns={"answer": [f"a{tag}{i // G}" for i in range(n)]},
        rollouts=Rollouts([[i // G] for i in range(n)], [[i] for i in range(n)], texts, ["stop"] * n, [[-0.5]] * n),
        scores=RewardResult(total, {"correct": total.clone()}), group_size=G,
    )


def drawer(*draws):
    """`draw` returning the given ScoredGroups in turn; counts the calls."""
    it = iter(draws)

    def draw():
        draw.calls += 1
        return next(it)

    draw.calls = 0
    return draw


def test_keep_all_trains_on_one_draw_unchanged():
    g = groups([[1, 1], [0, 1]], "a")
    drawn, kept = KeepAll()(drawer(g))
    assert drawn is g and kept is g


def test_skip_zero_std_drops_exactly_the_groups_whose_rewards_are_all_equal():
    g = groups([[1, 1], [0, 1], [0, 0], [0.5, 0.2]], "a")
    draw = drawer(g)
    drawn, kept = SkipZeroStd()(draw)
    assert draw.calls == 1 and drawn is g
    assert drawn.zero_std.tolist() == [True, False, True, False]
    assert kept.prompts == ["a1", "a1", "a3", "a3"] and kept.rollouts.texts == ["a1.0", "a1.1", "a3.0", "a3.1"]
    assert kept.scores.total.tolist() == pytest.approx([0, 1, 0.5, 0.2])
    assert kept.columns["answer"] == ["aa1", "aa1", "aa3", "aa3"] and len(kept) == 2


def test_dynamic_sampling_draws_until_b_informative_groups_and_keeps_the_first_b():
    # B = 3 per draw; informative: 1 in the first draw, 1 in the second, 2 in the third.
    draw = drawer(groups([[1, 1], [0, 1], [0, 0]], "a"), groups([[1, 0], [1, 1], [1, 1]], "b"),
                  groups([[0, 1], [1, 0], [0, 1]], "c"), groups([[0, 1]] * 3, "d"))
    drawn, kept = DynamicSampling(max_extra_draws=5)(draw)
    assert draw.calls == 3 and len(drawn) == 9  # stopped as soon as 3 informative groups existed
    assert [kept.prompts[i] for i in range(0, 6, G)] == ["a1", "b0", "c0"]  # first B informative, in order
    assert not kept.zero_std.any() and len(kept) == 3


def test_dynamic_sampling_stops_after_max_extra_draws_with_what_it_has():
    draw = drawer(*[groups([[1, 1], [0, 1]], t) for t in "abcd"])
    drawn, kept = DynamicSampling(max_extra_draws=1)(draw)
    assert draw.calls == 2 and len(drawn) == 4 and kept.prompts == ["a1", "a1", "b1", "b1"]
    draw = drawer(groups([[1, 1], [0, 0]], "a"))
    drawn, kept = DynamicSampling(max_extra_draws=0)(draw)
    assert draw.calls == 1 and len(kept) == 0


def test_filter_options_compose_onto_algo_batch_filter():
    assert isinstance(instantiate(compose([]).algo.batch_filter), KeepAll)
    assert isinstance(instantiate(compose(["filter=skip_zero_std"]).algo.batch_filter), SkipZeroStd)
    ds = instantiate(compose(["filter=dynamic_sampling", "algo.batch_filter.max_extra_draws=7"]).algo.batch_filter)
    assert isinstance(ds, DynamicSampling) and ds.max_extra_draws == 7


def test_adaptive_kl_controller_is_ziegler_et_al():
    c = AdaptiveKLController(beta=0.1, target=2.0, horizon=100)
    assert c.update(3.0, n=10) == pytest.approx(0.1 * (1 + 0.2 * 10 / 100))  # error clipped at +0.2
    assert c.update(1.8, n=10) == pytest.approx(0.1 * 1.02 * (1 - 0.1 * 10 / 100))  # 1.8/2 - 1 = -0.1
    assert c.update(2.0, n=10) == pytest.approx(0.1 * 1.02 * 0.99)  # on target: unchanged


def test_adapt_steers_the_kl_towards_the_limit():
    """A KL that falls as beta rises (kl = 0.2 / beta): adapt brings it to the limit."""
    watch = KLWatch(limit=2.0, action="adapt", horizon=40, beta=0.05)
    kls = []
    for step in range(200):
        kls.append(0.2 / watch.beta)
        watch.update(step, kls[-1], n=8)
    assert kls[0] == pytest.approx(4.0) and abs(kls[-1] - 2.0) < 0.02
    assert watch.beta == pytest.approx(0.1, rel=0.01)


def test_warn_prints_and_carries_on(capsys):
    watch = KLWatch(limit=5.0, action="warn", horizon=1e4, beta=0.04)
    assert watch.update(1, 4.0, n=8) is None
    assert watch.update(2, 6.5, n=8) is None
    err = capsys.readouterr().err
    assert "kl/mean=6.5 passed algo.kl_limit=5 at step 2" in err and "step 1" not in err
    assert watch.beta == 0.04


def test_stop_is_a_stop_reason_naming_the_kl_and_the_limit():
    watch = KLWatch(limit=5.0, action="stop", horizon=1e4, beta=0.04)
    assert watch.update(2, 4.9, n=8) is None
    stop = watch.update(3, 7.25, n=8)
    assert stop.message == "kl/mean=7.25 passed algo.kl_limit=5 at step 3 (algo.kl_action=stop)"
    assert stop.exit_code == 1


def test_kl_watch_is_off_without_a_limit():
    watch = KLWatch(limit=None, action="stop", horizon=1e4, beta=0.04)
    assert watch.update(1, 1e6, n=8) is None
    assert watch.beta == 0.04


@pytest.mark.parametrize("override,message", [
    (["algo.kl_action=halt"], "algo.kl_action='halt' is invalid: must be one of warn, stop, adapt"),
    (["algo.kl_limit=-1"], "algo.kl_limit=-1.0 is invalid: must be > 0 or null"),
    (["algo.kl_limit=5", "algo.beta=0"], "algo.kl_limit=5.0 is invalid: needs algo.beta > 0"),
    (["algo.ref_refresh_every=-2"], "algo.ref_refresh_every=-2 is invalid: must be >= 0"),
    (["algo.ref_refresh_every=10", "algo.beta=0"], "algo.ref_refresh_every=10 is invalid: needs algo.beta > 0"),
    (["algo.ref_refresh_alpha=0"], "algo.ref_refresh_alpha=0.0 is invalid: must be in (0, 1]"),
    (["model.lora.r=-1"], "model.lora.r=-1 is invalid: must be >= 0"),
    (["filter=dynamic_sampling", "algo.batch_filter.max_extra_draws=-1"],
     "algo.batch_filter.max_extra_draws=-1 is invalid: must be an integer >= 0"),
])
def test_bad_variant_settings_name_the_key(override, message):
    with pytest.raises(ConfigError) as err:
        validate(compose(override))
    assert str(err.value).startswith(message)


def test_overlong_penalty_is_dapo_eq_13():
    r = OverlongPenalty(max_tokens=20, cache_tokens=4)
    ids = [[0] * n for n in (0, 16, 17, 18, 20, 21, 30)]
    assert r([""] * 7, [""] * 7, completion_ids=ids) == pytest.approx([0, 0, -0.25, -0.5, -1.0, -1.0, -1.0])
    # ((L_max - L_cache) - |y|) / L_cache, by hand for |y| = 19: (16 - 19) / 4
    assert r.penalty(19) == pytest.approx(-0.75)


def test_overlong_penalty_gets_completion_ids_through_rewards():
    rewards = Rewards({"overlong": (OverlongPenalty(max_tokens=4, cache_tokens=2), 0.5)})
    rollouts = Rollouts([[9], [9]], [[1, 2, 3], [1]], ["abc", "a"], ["stop", "stop"], [[0.0] * 3, [0.0]])
    out = rewards(PromptBatch(["p", "p"], {"prompt": ["p", "p"]}), rollouts)
    assert out.total.tolist() == pytest.approx([0.5 * -0.5, 0.0])


@pytest.fixture(scope="module")
def tiny_rm(tmp_path_factory):
    """A tiny Qwen2 reward model (num_labels=1) with the tiny model's tokenizer and config."""
    from transformers import Qwen2ForSequenceClassification

    from examples.demo.tiny import build_config, build_tokenizer

    tok = build_tokenizer()
    config = build_config(tok, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2, num_kv_heads=1)
    config.num_labels = 1
    torch.manual_seed(0)
    model = Qwen2ForSequenceClassification(config).eval()
    out = tmp_path_factory.mktemp("rm")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out, model, tok


def test_reward_model_scores_equal_a_direct_forward_of_prompt_plus_completion(tiny_rm):
    from grpo_cli.rewards.model import RewardModel

    path, model, tok = tiny_rm
    prompts = ["12+34=", "7+8=", "a much longer prompt, to force padding: ", "x"]
    completions = ["46", "15 and some more text", "!", ""]
    rm = RewardModel(str(path), device="cpu", batch_size=3)  # batches of 3 and 1, padded
    scores = rm(prompts, completions, answer=["46"] * 4)
    with torch.no_grad():
        direct = [model(torch.tensor([tok(p + c, add_special_tokens=False)["input_ids"]])).logits[0, 0].item()
                  for p, c in zip(prompts, completions)]
    assert scores == pytest.approx(direct, abs=1e-5)
    assert len(set(round(s, 4) for s in scores)) == 4  # the texts really score differently


def test_reward_model_scores_a_conversation_through_its_chat_template(tiny_rm):
    from grpo_cli.rewards.model import RewardModel

    path, model, tok = tiny_rm
    prompt = [{"role": "user", "content": "12+34="}]
    completion = [{"role": "assistant", "content": "46"}]
    (score,) = RewardModel(str(path), device="cpu")([prompt], [completion])
    text = "<|im_start|>user\n12+34=<|im_end|>\n<|im_start|>assistant\n46<|im_end|>\n"
    with torch.no_grad():
        direct = model(torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])).logits[0, 0].item()
    assert score == pytest.approx(direct, abs=1e-5)


def test_reward_model_next_to_a_rule_reward_with_weights(tiny_rm):
    path, _, _ = tiny_rm
    cfg = compose(["reward=arithmetic", "+reward.funcs.rm.fn._target_=grpo_cli.rewards.model.RewardModel",
                   f"+reward.funcs.rm.fn.path={path}", "+reward.funcs.rm.fn.device=${train.device}",
                   "+reward.funcs.rm.weight=0.5", "train.device=cpu"])
    rewards = Rewards.from_config(cfg.reward)
    assert rewards.funcs["rm"][0].device == torch.device("cpu")  # the learner's device, by interpolation
    batch = PromptBatch(["1+1=", "1+1="], {"prompt": ["1+1=", "1+1="], "answer": ["2", "2"]})
    out = rewards(batch, Rollouts([[9], [9]], [[1], [2]], ["2", "3"], ["stop", "stop"], [[0.0], [0.0]]))
    rm, rule = out.per_reward["rm"], out.per_reward["correct"]
    assert rule.tolist() == [1.0, 0.0]
    assert torch.allclose(out.total, rule + 0.5 * rm) and not math.isclose(rm[0].item(), 0.0)


def _tiny_lm(seed):
    from examples.demo.tiny import build_model, build_tokenizer

    return build_model(build_tokenizer(), seed=seed, hidden_size=16, intermediate_size=32, num_layers=1,
                       num_heads=2, num_kv_heads=1)


@pytest.mark.parametrize("alpha", [1.0, 0.25])
def test_reference_refresh_mixes_policy_into_reference_every_k_steps(alpha):
    from grpo_cli.algo.reference import ReferenceRefresh

    policy, ref = _tiny_lm(1), _tiny_lm(2)
    before = {k: v.clone() for k, v in ref.state_dict().items()}
    refresh = ReferenceRefresh(every=3, alpha=alpha, ref=ref, policy_weights=lambda: iter(policy.state_dict().items()))
    assert refresh(1) == {} and refresh(2) == {}
    assert all(torch.equal(v, before[k]) for k, v in ref.state_dict().items())  # not due yet
    assert refresh(3) == {"ref/refreshed": 1.0}
    pol = policy.state_dict()
    assert ref.config.tie_word_embeddings  # lm_head and embeddings share storage: mixed once, not twice
    for k, v in ref.state_dict().items():
        expected = pol[k] if alpha == 1.0 else alpha * pol[k] + (1 - alpha) * before[k]
        assert torch.allclose(v, expected, atol=1e-7), k
    assert not torch.equal(ref.state_dict()["lm_head.weight"], before["lm_head.weight"])

    # The reference's weights round-trip through state_dict (what a checkpoint keeps).
    state = refresh.state_dict()
    other = ReferenceRefresh(every=3, alpha=alpha, ref=_tiny_lm(2), policy_weights=None)
    other.load_state_dict(state)
    assert other.last == 3 and all(torch.equal(v, ref.state_dict()[k]) for k, v in other.ref.state_dict().items())
    assert ReferenceRefresh(every=3, alpha=alpha, ref=ref, policy_weights=None).state_dict() == {"last": 0}


@pytest.mark.parametrize("checkpointing", [False, True])
def test_lora_gradients_reach_the_adapters_only(checkpointing):
    from omegaconf import OmegaConf

    from grpo_cli.config.validate import LoraSettings
    from grpo_cli.learner.lora import apply_lora, merged_weights

    model = _tiny_lm(1).train()
    if checkpointing:
        model.gradient_checkpointing_enable()
    settings = OmegaConf.merge(OmegaConf.structured(LoraSettings), {"r": 2, "alpha": 4})
    peft_model = apply_lora(model, settings)
    model(torch.tensor([[5, 6, 7, 8]]), labels=torch.tensor([[5, 6, 7, 8]])).loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert grads and all(".lora_" in n for n in grads)
    assert all(g is not None and g.abs().sum() > 0 for n, g in grads.items() if ".lora_B." in n)
    # Before any update B = 0: the merged weights are the base weights, under the base names.
    base = _tiny_lm(1).state_dict()
    merged = dict(merged_weights(model))
    assert merged.keys() == base.keys() and all(torch.equal(merged[k], base[k]) for k in base)
    assert peft_model.get_base_model() is model  # adapters injected in place: the learner's forward is unchanged
