"""Sequence packing: the index plan on hand-built lengths, and a packed forward of a real tiny
model (separate sequences, and prompts shared by their completions) that gives the same per-token
log-probs as the padded forward."""

from __future__ import annotations

import pytest
import torch

from grpo_cli.learner.packing import pack_ids, plan, unpack


def _layout(prompts, completions, pad=0):
    """The learner's [n, P + T] layout: left-padded prompts, right-padded completions."""
    p, t = max(map(len, prompts)), max(map(len, completions))
    ids = torch.full((len(prompts), p + t), pad)
    attn = torch.zeros_like(ids)
    for i, (pr, co) in enumerate(zip(prompts, completions)):
        ids[i, p - len(pr) : p + len(co)] = torch.tensor(pr + co)
        attn[i, p - len(pr) : p + len(co)] = 1
    return ids, attn, p, t


def test_plan_puts_each_token_where_it_belongs():
    prompts, completions = [[11, 12], [21, 22, 23]], [[13, 14, 15, 16], [24]]
    ids, _, p, t = _layout(prompts, completions)
    pk = plan(torch.tensor([2, 3]), torch.tensor([4, 1]), ids.shape[1])
    packed = pack_ids(ids, pk, pad_id=-1)  # [R, L]
    # Sequences of 2 + 4 - 1 = 5 and 3 + 1 - 1 = 3 tokens, rows of 5: two rows.
    assert packed.tolist() == [[11, 12, 13, 14, 15], [21, 22, 23, -1, -1]]
    assert pk.position_ids.tolist() == [[0, 1, 2, 3, 4], [0, 1, 2, 0, 1]]
    assert pk.real_tokens == 8 and abs(pk.pad_frac - 0.2) < 1e-9
    # The slot predicting each completion token holds the token before it.
    flat = packed.reshape(-1)
    targets = unpack(flat[pk.predict].float(), pk, 2, t)
    assert targets.tolist() == [[12, 13, 14, 15], [23, 0, 0, 0]]


def test_a_shared_prompt_is_fed_once_and_seen_only_by_its_own_completions():
    """Rows 0 and 2 share prompt [11, 12]; row 1 has its own. Completions follow their prompt's
    single copy, positions continue from the prompt, and the mask keeps the branches apart."""
    prompts, completions = [[11, 12], [21, 22, 23], [11, 12]], [[13, 14, 15], [24, 25], [16, 17]]
    ids, _, p, t = _layout(prompts, completions)
    pk = plan(torch.tensor([2, 3, 2]), torch.tensor([3, 2, 2]), ids.shape[1], groups=torch.tensor([0, 1, 0]))
    packed = pack_ids(ids, pk, pad_id=-1)  # [R, L]
    # Free attention (attn_cost=0): one row of 9, [11 12 | 13 14 | 16] then [21 22 23 | 24].
    assert packed.tolist() == [[11, 12, 13, 14, 16, 21, 22, 23, 24]]
    assert pk.position_ids.tolist() == [[0, 1, 2, 3, 2, 0, 1, 2, 3]]
    assert pk.branch.tolist() == [[0, 0, 1, 1, 2, 0, 0, 0, 1]]
    assert pk.real_tokens == 9
    mask = pk.attention_mask()[0, 0].int()  # [L, L]
    assert mask[:5, :5].tolist() == [[1, 0, 0, 0, 0],
                                     [1, 1, 0, 0, 0],
                                     [1, 1, 1, 0, 0],
                                     [1, 1, 1, 1, 0],
                                     [1, 1, 0, 0, 1]]  # 16 sees the prompt and itself, not 13 14
    assert mask[5:, :5].sum() == 0 and mask[:5, 5:].sum() == 0  # the two prompts' segments apart
    # Both first completion tokens (13 and 16) are predicted by the prompt's last slot (12).
    targets = unpack(packed.reshape(-1)[pk.predict].float(), pk, 3, t)
    assert targets.tolist() == [[12, 13, 14], [23, 24, 0], [12, 16, 0]]


def test_costly_attention_keeps_rows_as_narrow_as_the_longest_sequence():
    """The same batch when a query-key pair costs as much as a token slot: rows of 4 (the longest
    sequence), where 16 cannot join its prompt's row and packs a second copy of [11, 12]."""
    prompts, completions = [[11, 12], [21, 22, 23], [11, 12]], [[13, 14, 15], [24, 25], [16, 17]]
    ids, _, _, _ = _layout(prompts, completions)
    pk = plan(torch.tensor([2, 3, 2]), torch.tensor([3, 2, 2]), ids.shape[1], torch.tensor([0, 1, 0]), attn_cost=1.0)
    assert pack_ids(ids, pk, pad_id=-1).tolist() == [[11, 12, 13, 14], [11, 12, 16, -1], [21, 22, 23, 24]]
    padding = pk.attention_mask()[1, 0, 3].int().tolist()
    assert padding == [0, 0, 0, 1]  # padding sees only itself


@pytest.mark.parametrize("shared", [False, True], ids=["separate", "shared-prompts"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_forward_matches_padded_forward(tiny_model, shared, attn):
    from transformers import AutoModelForCausalLM

    from grpo_cli.learner.learner import packed_mask

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32, attn_implementation=attn).eval()
    g = torch.Generator().manual_seed(0)
    p_lens, c_lens = [5, 6, 5, 6, 5, 6], [3, 17, 1, 9, 12, 4]
    prompts = [torch.randint(3, 100, (n,), generator=g).tolist() for n in p_lens]
    groups = torch.tensor([0, 1, 0, 1, 0, 1]) if shared else torch.arange(6)
    if shared:  # rows 0, 2, 4 and rows 1, 3, 5 are two prompts' groups
        prompts = [prompts[i % 2] for i in range(6)]
    completions = [torch.randint(3, 100, (n,), generator=g).tolist() for n in c_lens]
    ids, attn_2d, p, t = _layout(prompts, completions)
    with torch.no_grad():
        positions = (attn_2d.cumsum(-1) - 1).clamp_min(0)
        logits = model(input_ids=ids, attention_mask=attn_2d, position_ids=positions).logits[:, p - 1 : -1]  # [n, T, V]
        padded = logits.log_softmax(-1).gather(-1, ids[:, p:, None]).squeeze(-1) * attn_2d[:, p:]  # [n, T]

        pk = plan(torch.tensor(p_lens), torch.tensor(c_lens), ids.shape[1], groups if shared else None)
        assert pk.src.shape[0] < len(p_lens)  # fewer rows than sequences: some were packed together
        if shared:
            assert pk.real_tokens == 5 + 6 + sum(c - 1 for c in c_lens)  # 2 prompts fed, not 6
        out = model(input_ids=pack_ids(ids, pk, 0), attention_mask=packed_mask(model, pk), position_ids=pk.position_ids,
                    use_cache=False).logits  # [R, L, V]
        flat = out.reshape(-1, out.shape[-1])[pk.predict].log_softmax(-1)  # [M, V]
        targets = ids[:, p:][pk.rows, pk.cols]  # [M]
        packed = unpack(flat.gather(-1, targets[:, None]).squeeze(-1), pk, len(p_lens), t)  # [n, T]
    torch.testing.assert_close(packed, padded, atol=1e-5, rtol=1e-5)
