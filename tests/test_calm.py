import dataclasses

import pytest
import torch

import eval as evaluate
import train
from calm_min.autoencoder import AEConfig, Autoencoder
from calm_min.checkpoint import state_hash
from calm_min.backbone import BackboneConfig
from calm_min.calm import CALM, CALMConfig
from calm_min.checkpoint import CheckpointError, load_model
from calm_min.config import EvalConfig
from calm_min.sampling import Sampler, SamplingBudgetExceeded


def tiny_calm(K=4, V=40, l=8, seed=0, random_head=True):
    torch.manual_seed(seed)
    ae = Autoencoder(AEConfig(vocab_size=V, chunk_size=K, latent_size=l, dim=32, hidden=64))
    model = CALM(CALMConfig(head_blocks=2, noise_size=8, n_targets=10,
                            backbone=BackboneConfig(n_layer=2, n_head=2, n_embd=64)), ae)
    if random_head:
        spread_head(model.head)
    return model.eval()


def spread_head(head):
    """At init every sample of the energy head is equal (zero output layer) and its residual blocks add
    ~1e-7, so the samples ignore h, and a test could not see the context reach them. Unit-scale weights
    in every layer make the samples depend on the noise and on h, as a trained head's do."""
    for m in head.modules():
        if isinstance(m, torch.nn.Linear):
            torch.nn.init.normal_(m.weight, std=m.in_features ** -0.5)


def test_forward_shapes_and_loss():
    model = tiny_calm()
    x = torch.randint(40, (2, 24))
    out, loss = model(x[:, :-4], x[:, 4:])                    # targets: the input shifted by one chunk
    assert out['samples'].shape == (8, 2, 5, 8) and loss.dim() == 0 and torch.isfinite(loss)
    with pytest.raises(ValueError, match='not a multiple of chunk_size=4'):
        model(torch.randint(40, (2, 23)))


def test_mean_err_is_the_distance_of_the_sample_mean_to_the_posterior_mean():
    model = tiny_calm()
    x = torch.randint(40, (2, 24))
    out, _ = model(x[:, :-4], x[:, 4:])
    mu = model.ae.encode(model.chunks(x[:, 4:]))[0]                          # (2, 5, l)
    expect = (out['samples'].mean(0) - mu).norm(dim=-1).mean()
    torch.testing.assert_close(out['mean_err'], expect)


def test_prompt_is_left_padded_with_end_of_text_to_whole_chunks():
    model = tiny_calm()
    eot = model.ae.cfg.mask_id = 7                                         # the id padding must use
    for T0, pad in ((6, 2), (8, 0), (1, 3), (0, 4)):
        prompt = torch.randint(8, 40, (2, T0))
        out = model.pad_prompt(prompt)
        assert out.shape == (2, T0 + pad) and torch.equal(out[:, pad:], prompt)
        assert (out[:, :pad] == eot).all()


def test_batch_sampler_pools_each_positions_own_draws(monkeypatch):
    """Algorithm 2 at T = 1/2 picks each position's chunk from a pool of that position's own N decoded
    head samples (pool (R, N, K) is the decoder's (N, R, K) output with its first two axes swapped)."""
    import calm_min.calm as calm_module
    model = tiny_calm()
    pools, decoded = [], []
    pick, decode = calm_module.batch_temperature_sample, model.ae.decode
    monkeypatch.setattr(calm_module, 'batch_temperature_sample', lambda p, T, g: pools.append(p) or pick(p, T, g))
    monkeypatch.setattr(model.ae, 'decode', lambda z: decoded.append(decode(z)) or decoded[-1])
    h = torch.randn(3, 64)
    out = model.sample_chunks(h, 1, Sampler(temperature=0.5, num_candidates=6), torch.Generator().manual_seed(0))
    assert out.shape == (1, 3, 4) and len(pools) == len(decoded) == 1 and decoded[0].shape == (6, 3, 4)
    for r in range(3):
        assert torch.equal(pools[0][r], decoded[0][:, r])
        assert any(torch.equal(out[0, r], c) for c in decoded[0][:, r])
    # a pool so large that the positions go through the decoder two at a time: every one still gets a chunk
    big = model.sample_chunks(h, 1, Sampler(temperature=0.5, num_candidates=2 ** 13), torch.Generator().manual_seed(0))
    assert big.shape == (1, 3, 4) and len(pools) == 3 and [p.shape[0] for p in pools[1:]] == [2, 1]


def test_k_l_and_vocabulary_come_from_the_autoencoder():
    """CALM has no K, l or vocabulary of its own: they cannot disagree with its autoencoder's."""
    for K, V, l in ((2, 30, 6), (4, 40, 8)):
        ae = Autoencoder(AEConfig(vocab_size=V, chunk_size=K, latent_size=l, dim=32, hidden=64))
        model = CALM(CALMConfig(backbone=BackboneConfig(n_layer=1, n_head=2, n_embd=32)), ae)
        assert model.chunk_size == model.tokens_per_step == K
        assert model.tok_emb.num_embeddings == V and model.head.final_out.out_features == l
        assert model.compress[0].in_features == K * 32


@pytest.mark.parametrize('temperature,sampler', [(1.0, 'batch'), (0.5, 'batch'), (0.5, 'exact')])
def test_cached_generation_equals_recomputation(temperature, sampler):
    model = tiny_calm()
    prompt = torch.randint(40, (2, 6))                       # not a multiple of K: left-padded
    s = Sampler(temperature=temperature, method=sampler, num_candidates=16)
    a = model.generate(prompt, 14, s, generator=torch.Generator().manual_seed(5))
    b = model.generate(prompt, 14, s, generator=torch.Generator().manual_seed(5), use_cache=False)
    assert a.shape == (2, 20) and torch.equal(a, b) and torch.equal(a[:, :6], prompt)


def test_k_tokens_per_backbone_step(monkeypatch):
    model = tiny_calm(K=4)
    calls = []
    orig = model.backbone.forward
    monkeypatch.setattr(model.backbone, 'forward', lambda x, **kw: calls.append(x.shape[1]) or orig(x, **kw))
    out = model.generate(torch.randint(40, (1, 8)), 20)
    assert out.shape == (1, 28)
    assert calls == [1] + [1] * 5          # prefill the prompt's first chunk; then one step per 4 new tokens


def test_frozen_ae_untouched_by_training(train_cfg):
    """Train the AE, then CALM: the AE gets no gradient and its weights stay bit-identical."""
    train.main(dataclasses.replace(train_cfg, model='ae'))
    ae_before = load_model(train_cfg.ae_ckpt_path)[0]
    res = train.main(dataclasses.replace(train_cfg, model='calm'))
    calm, ckpt = load_model(res['ckpt'], ('calm',))
    assert state_hash(calm.ae) == state_hash(ae_before) == ckpt['ae_hash']
    assert all(not p.requires_grad for p in calm.ae.parameters())
    model = tiny_calm()
    model.train()
    x = torch.randint(40, (2, 16))
    _, loss = model(x[:, :-4], x[:, 4:])
    loss.backward()
    assert all(p.grad is None for p in model.ae.parameters())
    assert not model.ae.training                              # stays in eval mode: no dropout


def test_calm_pipeline_trains_missing_ae(train_cfg):
    res = train.main(dataclasses.replace(train_cfg, model='calm'))
    assert train_cfg.ae_ckpt_path.exists() and len(res['losses']) == train_cfg.max_iters


def test_small_k_trains_and_reports_brierlm(train_cfg):
    """K = 2: the AE, then CALM, whose evaluation rolls out two chunks per BrierLM sample."""
    res = train.main(dataclasses.replace(train_cfg, model='calm', chunk_size=2))
    assert 0 <= res['evals'][-1]['val_brierlm'] <= 100
    assert load_model(res['ckpt'], ('calm',))[0].chunk_size == 2


def test_bad_ae_checkpoints_fail_before_training(train_cfg, tmp_path):
    calm_cfg = dataclasses.replace(train_cfg, model='calm')
    with pytest.raises(CheckpointError, match='not found'):
        train.main(dataclasses.replace(calm_cfg, ae_ckpt=str(tmp_path / 'nope.pt')))
    train.main(dataclasses.replace(train_cfg, model='ae'))
    with pytest.raises(CheckpointError, match='chunk_size K=4 but --chunk_size=2'):
        train.main(dataclasses.replace(calm_cfg, chunk_size=2))
    other = dataclasses.replace(train_cfg, tokenizer='bpe', vocab_size=300)
    with pytest.raises(CheckpointError, match='trained with tokenizer'):
        train.main(dataclasses.replace(other, model='calm', ae_ckpt=str(train_cfg.ae_ckpt_path)))
    assert not calm_cfg.ckpt_path.exists()                    # nothing was trained or written


def train_on_cycle(cycle: list[int], steps: int, seed: int = 0, L: int = 12):
    """Sequences that walk a fixed cycle of chunk ids from a random phase, each id a random K=4-token
    chunk of a 32-token vocabulary: the next chunk is a deterministic function of the context.
    Train a small AE on the chunks, then CALM. Returns the fraction of next chunks (from chunk
    position 2 on, so each sees two chunks of context) that one head sample decodes exactly, the
    model, and 64 held-out sequences (64, L*K)."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    V, K, l = 32, 4, 16
    chunks = torch.randint(1, V, (max(cycle) + 1, K), generator=g)
    cyc = torch.tensor(cycle)

    def batch(B):
        start = torch.randint(0, len(cyc), (B, 1), generator=g)
        return chunks[cyc[(start + torch.arange(L)) % len(cyc)]]         # (B, L, K)

    ae = Autoencoder(AEConfig(vocab_size=V, chunk_size=K, latent_size=l, dim=64, hidden=128))
    opt = torch.optim.AdamW(ae.parameters(), 3e-3)
    for _ in range(200):
        _, loss = ae(batch(32).view(-1, K), generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    ae.eval()
    model = CALM(CALMConfig(head_blocks=2, noise_size=16,
                            n_samples=8, n_targets=100, backbone=BackboneConfig(n_layer=2, n_head=2, n_embd=64)), ae)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], 1e-3)
    for _ in range(steps):
        b = batch(16).flatten(1)                                          # (16, L*K)
        _, loss = model(b[:, :-K], b[:, K:], generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        x = batch(64)
        pred = model.ae.decode(model.head(model.hidden(x)[:, 1:-1], 1, g)[0])  # (64, L-2, K)
        return (pred == x[:, 2:]).all(-1).float().mean().item(), model, x.flatten(1)


def test_calm_learns_the_next_chunk_from_context():
    """End to end (AE, backbone, energy head, decoder): a cycle of 6 distinct chunks. A model that
    ignored its context could at best name the most frequent chunk (1/6 right); over seeds 0-4 the
    accuracy after 300 steps was 0.975-0.998, so 0.9 leaves a wide margin."""
    acc, model, held_out = train_on_cycle([0, 1, 2, 3, 4, 5], steps=300)
    assert acc > 0.9
    # eval.py's context diagnostic: another sequence's context is far worse than the model's own
    e = evaluate.eval_context(model, held_out, EvalConfig(batch_size=16))
    assert e['energy_loss_full_context'] + 1 < e['energy_loss_other_context']
    assert e['energy_loss_positions'] == 64 * 11


def test_exact_sampler_keeps_its_draw_budget(monkeypatch):
    """CALM's 'exact' sampler passes the Sampler's max_draws on: at T = 0.1 ten identical decoded chunks
    are needed per round, which a head with spread samples almost never gives in 40 draws. (A sampler
    that dropped the bound would run on: past 1000 head calls the spy stops it with another error.)"""
    model = tiny_calm()
    calls, head = [], model.head.forward

    def counted(*a, **kw):
        calls.append(1)
        if len(calls) > 1000:
            raise RuntimeError('runaway: the draw budget was not applied')
        return head(*a, **kw)
    monkeypatch.setattr(model.head, 'forward', counted)
    with pytest.raises(SamplingBudgetExceeded, match='max_draws=40'):
        model.sample_chunks(torch.randn(1, 64), 1, Sampler(temperature=0.1, method='exact', max_draws=40),
                            torch.Generator().manual_seed(0))
