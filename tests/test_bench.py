"""bench.py at the test sizes: it runs, its weight accounting matches the configs, and the naive
energy loss it compares memory against computes the same loss."""
import torch

import bench
from calm_min.energy_head import energy_loss
from conftest import ROOT


def bench_cfg(*extra):
    """(BenchConfig, TrainConfig) as bench.py parses its command line."""
    return bench.parse_bench_args([str(ROOT / 'config' / 'test.py'), '--device=cpu', '--dtype=float32',
                                   '--gen_tokens=8', '--repeats=1', '--train_steps=1', *extra])


def test_generation_and_training_report(capsys):
    rep = bench.main(*bench_cfg('--what=all', '--positions=64'), ['--what=all'])
    gen = rep['generation']
    assert gen['gpt_tokens_per_s'] > 0 and gen['calm_tokens_per_s'] > 0
    assert abs(sum(gen['calm_time_share'].values()) - 1) < 0.01
    assert rep['training']['calm_train_tokens_per_s'] > 0
    assert rep['memory']['ours_peak_mib'] >= 0 and rep['memory']['naive_peak_mib'] > 0
    assert '"speedup"' in capsys.readouterr().out


def test_params_read_per_step_by_hand():
    _, cfg = bench_cfg()
    gpt, calm = bench.models(cfg, torch.device('cpu'))
    w = bench.params_read_per_step(gpt, calm)
    d, V, K, L, l = cfg.n_embd, cfg.vocab_size, cfg.chunk_size, cfg.n_layer, cfg.latent_size
    hid = 64 * -(-8 * d // (3 * 64))
    layer = 3 * d * d + d * d + 3 * d * hid + 2 * d                      # qkv, proj, SwiGLU, two norms
    backbone = L * layer + d
    assert w['calm_parts']['backbone'] == backbone
    assert w['gpt'] == backbone + V * d                                    # the tied LM head is read
    assert w['calm_parts']['compress'] == K * d * 2 * d + 2 * d + 2 * d * d + d + 2 * d
    da, ha = cfg.ae_dim, cfg.ae_hidden
    swiglu = 3 * da * ha + da
    assert w['calm_parts']['decoder'] == (l * da + da) + swiglu + da * K * da + swiglu + da + V * da
    assert w['calm'] == sum(w['calm_parts'].values())


def test_naive_energy_loss_agrees():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(4, 5, 3, generator=g), torch.randn(7, 5, 3, generator=g)
    for alpha in (1.0, 1.5):
        torch.testing.assert_close(bench.naive_energy_loss(x, y, alpha), energy_loss(x, y, alpha))
