"""Tests aimed at specific, plausible bugs that the rest of the suite once let through (each was
planted on purpose and seen to fail here): the baseline's temperature, unsafe checkpoint loading,
leaking validation documents into training, the AE's mask id, bf16 autocast, gradient accumulation
and the exact Brier estimator's collision term."""
import dataclasses
import itertools
import json
import math
from pathlib import Path

import pytest
import torch

import train
from calm_min.backbone import BackboneConfig
from calm_min.brierlm import estimate
from calm_min.checkpoint import CheckpointError, load_checkpoint, load_model
from calm_min.data import Corpus, prepare
from calm_min.device import autocast
from calm_min.gpt import GPT, GPTConfig
from calm_min.sampling import Sampler
from conftest import make_docs


def tiny_gpt(V=6, seed=0, sharpen=4.0):
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=V, backbone=BackboneConfig(n_layer=2, n_head=2, n_embd=32))).eval()
    with torch.no_grad():
        model.tok_emb.weight.mul_(sharpen)                   # varied, far from uniform next-token distributions
    return model


# -- 2. the baseline's temperature -------------------------------------------------------------

def test_gpt_near_zero_temperature_is_greedy():
    model = tiny_gpt(V=20)
    prompt = torch.randint(20, (4, 3), generator=torch.Generator().manual_seed(1))
    out = model.generate(prompt, 6, Sampler(temperature=1e-3), generator=torch.Generator().manual_seed(2))
    greedy = prompt
    for _ in range(6):
        logits, _ = model(greedy)
        greedy = torch.cat([greedy, logits[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(out, greedy)


def test_gpt_temperature_half_matches_tempered_softmax():
    """20,000 first tokens at T = 0.5 against softmax(logits / 0.5): Pearson chi-square with V - 1 = 5
    degrees of freedom, refused above 20.5 (false-alarm rate 0.1%; seeds fixed, so deterministic).
    At T = 1 (a sampler that ignores T) the statistic is in the thousands."""
    model = tiny_gpt(V=6)
    prompt = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        logits, _ = model(prompt)
    expected = torch.softmax(logits[0, -1] / 0.5, -1) * 20000
    out = model.generate(prompt.expand(20000, -1), 1, Sampler(temperature=0.5), generator=torch.Generator().manual_seed(0))
    counts = torch.bincount(out[:, -1], minlength=6).double()
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 20.5, chi2


# -- 3. checkpoints never run code when loaded ---------------------------------------------------

class Payload:
    """An arbitrary class instance (harmless): unpickling it needs code execution, which weights_only refuses."""
    def __init__(self):
        self.x = 1


def test_checkpoint_with_an_object_is_refused(tmp_path):
    p = tmp_path / 'obj.pt'
    torch.save({'format': 1, 'kind': 'gpt', 'model': {}, 'extra': Payload()}, p)
    with pytest.raises(CheckpointError, match='would run code; refused') as e:
        load_checkpoint(p)
    assert 'weights_only' not in str(e.value)                # never the hint to load it unsafely


# -- 4. the splits -------------------------------------------------------------------------------

def test_train_and_val_splits_are_disjoint_and_cover_the_corpus(tmp_path):
    docs = [f'{i:03d} ' + d for i, d in enumerate(make_docs(45, words=20))]   # distinct documents
    src = tmp_path / 'c.jsonl'
    src.write_text(''.join(json.dumps({'text': d}) + '\n' for d in docs))
    c = Corpus(prepare(str(src), 'bytes', 0, str(tmp_path / 'cache'), verbose=False))
    split = {}
    for s in ('train', 'val'):
        toks, starts = c.tokens(s), list(c.doc_starts(s)) + [len(c.tokens(s))]
        split[s] = [c.tokenizer.decode(toks[a:b - 1].tolist()) for a, b in zip(starts[:-1], starts[1:])]
    assert not set(split['train']) & set(split['val'])
    assert sorted(split['train'] + split['val']) == sorted(docs)
    assert len(split['val']) == 2                                               # documents 10 and 30


# -- 5. the AE's mask id -------------------------------------------------------------------------

def test_ae_records_the_tokenizers_end_of_text_as_mask_id(train_cfg):
    res = train.main(dataclasses.replace(train_cfg, model='ae'))                # byte tokenizer: eot is 256
    ae, ckpt = load_model(res['ckpt'], ('ae',))
    from calm_min.tokenizer import Tokenizer
    eot = Tokenizer.from_str(ckpt['tokenizer_json'], ckpt['tokenizer']['kind']).eot_id
    assert eot != 0 and ae.cfg.mask_id == eot == ckpt['model_config']['mask_id']


# -- 6. bf16 autocast is bf16 --------------------------------------------------------------------

def test_bf16_autocast_on_cpu():
    lin = torch.nn.Linear(8, 4)
    with autocast(torch.device('cpu'), 'bfloat16'):
        assert lin(torch.randn(2, 8)).dtype == torch.bfloat16
    with autocast(torch.device('cpu'), 'float32'):
        assert lin(torch.randn(2, 8)).dtype == torch.float32


# -- 7. gradient accumulation --------------------------------------------------------------------

def test_grad_accum_equals_one_big_batch(train_cfg, monkeypatch):
    """One step on 2 micro-batches of 4 gives the gradients of one batch of 8 (the same sequences: the
    data generator draws them in the same order), up to float rounding; also the same logged loss and
    training FLOPs."""
    grads = []
    orig = torch.nn.utils.clip_grad_norm_

    def spy(params, max_norm, *a, **k):
        params = list(params)
        grads.append(torch.cat([p.grad.flatten() for p in params if p.grad is not None]).clone())
        return orig(params, max_norm, *a, **k)
    monkeypatch.setattr(torch.nn.utils, 'clip_grad_norm_', spy)
    base = dataclasses.replace(train_cfg, model='gpt', max_iters=1, eval_interval=100, brier_blocks=0, eval_iters=1)
    one = train.main(dataclasses.replace(base, batch_size=8, grad_accum=1, out_dir=base.out_dir + '/one'))
    two = train.main(dataclasses.replace(base, batch_size=4, grad_accum=2, out_dir=base.out_dir + '/two'))
    assert len(grads) == 2 and grads[0].norm() > 0
    torch.testing.assert_close(grads[1], grads[0], atol=1e-6, rtol=1e-4)
    assert two['losses'] == pytest.approx(one['losses'], rel=1e-5)          # the logged loss: the batch's mean
    flops = [load_checkpoint(r['ckpt'])['train_flops'] for r in (one, two)]
    assert flops[0] > 0 and flops[1] == pytest.approx(flops[0])                # the same tokens per step


# -- 8. the exact Brier estimator, against brute force -------------------------------------------

def test_exact_estimator_expectation_is_brier_by_brute_force():
    """A GPT over 3 tokens, one context: every 4-gram's probability P(w) by enumeration, hence
    Brier-n = 2 P(y_1..n) - sum_{w in V^n} P(w)^2 exactly. The exact estimator is random only through
    its two sampled continuations a, b; weighting its value at every pair (a, b) of 4-grams by
    P(a) P(b) gives its expectation, which must equal Brier-n to float precision. The teacher-forced
    P(y_1..n) and the sum_x p(x | prefix)^2 it uses are those of model.continuations."""
    V = 3
    model = tiny_gpt(V=V, sharpen=3.0)
    block = torch.tensor([[0, 2, 1, 1, 0, 2, 2, 1]])                          # scored 4-gram: tokens 4..7
    ctx, target = block[0, :4], block[0, 4:]
    grams = torch.tensor(list(itertools.product(range(V), repeat=4)))        # (81, 4)
    with torch.no_grad():
        logits, _ = model(torch.cat([ctx.expand(81, -1), grams[:, :3]], 1))
    cond = torch.softmax(logits[:, 3:].double(), -1)                          # (81, 4, V): p(. | ctx, w_<j)
    p_step = cond.gather(-1, grams[..., None]).squeeze(-1)                    # (81, 4)
    P = p_step.cumprod(-1)                                                    # (81, 4): P(w_1..n)
    sq = cond.pow(2).sum(-1)                                                  # (81, 4): sum_x p(x | w_<n)^2
    t_idx = int((grams == target).all(-1).nonzero())
    # sum over distinct n-grams u of P(u)^2: each u is the prefix of V^(4-n) of the 81 4-grams
    brute = [2 * float(P[t_idx, n - 1]) - float(P[:, n - 1].pow(2).sum()) / V ** (4 - n) for n in range(1, 5)]
    a, b = torch.cartesian_prod(torch.arange(81), torch.arange(81)).T        # every pair of continuations
    cont = model.continuations(block, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(cont['p_target'][0, 0].double(), P[t_idx], atol=1e-6, rtol=1e-5)
    pairs = {'samples': torch.stack([grams[a], grams[b]])[:, None], 'target': target.expand(1, len(a), 4),
             'p_target': P[t_idx].expand(1, len(a), 4), 'sum_sq': torch.stack([sq[a], sq[b]])[:, None]}
    est = estimate(pairs, exact=True)[0]                                      # (81*81, 4)
    expectation = (est * (P[a, 3] * P[b, 3])[:, None]).sum(0)
    torch.testing.assert_close(expectation, torch.tensor(brute, dtype=torch.float64), atol=1e-10, rtol=1e-9)
    assert math.isclose(float(P[:, 3].sum()), 1.0, rel_tol=1e-12)


# -- 9. device choices ------------------------------------------------------------------------

def test_device_choices_by_hand(monkeypatch):
    """--compile=auto compiles on CUDA only; generation's KV cache stays float32 on a CPU whatever the
    weights' dtype (elsewhere it takes theirs); either bf16 capability of a CPU (avx512_bf16, AMX) is enough."""
    from calm_min import device as dv
    cpu, cuda = torch.device('cpu'), torch.device('cuda')
    assert dv.use_compile('auto', cuda) and not dv.use_compile('auto', cpu)
    assert dv.use_compile('true', cpu) and not dv.use_compile('false', cuda)
    assert dv.decode_cache_dtype(cpu, torch.bfloat16) == torch.float32
    assert dv.decode_cache_dtype(cuda, torch.bfloat16) == torch.bfloat16
    for avx, amx in ((True, False), (False, True), (True, True), (False, False)):
        monkeypatch.setattr(torch.cpu, '_is_avx512_bf16_supported', lambda: avx, raising=False)
        monkeypatch.setattr(torch.cpu, '_is_amx_tile_supported', lambda: amx, raising=False)
        assert dv.cpu_has_bf16() == (avx or amx)


def test_every_planted_bug_still_finds_its_line():
    """Each entry of tests/mutation_check.py names text that its file still holds, so the slow tier's
    check plants every bug instead of stopping at the first entry a later change left stale. While a
    bug is planted this test fails too, so the check leaves it out by its id, which must stay this test's."""
    from mutation_check import STALE_GUARD, M
    root = Path(__file__).resolve().parent.parent
    stale = [name for name, path, text, _, _ in M if text not in (root / path).read_text()]
    assert not stale, f"mutation entries whose text is no longer in their file (update them): {stale}"
    path, name = STALE_GUARD.split('::')                  # pytest ignores a --deselect that names nothing
    assert (root / path).resolve() == Path(__file__).resolve()
    assert name == test_every_planted_bug_still_finds_its_line.__name__
