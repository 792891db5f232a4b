"""bench.py at the test sizes: it runs, its weight accounting matches the configs, and the naive
energy loss it compares memory against computes the same loss."""
import pytest
import torch

import bench
from calm_min.energy_head import energy_loss
from conftest import ROOT


def bench_cfg(*extra):
    """(BenchConfig, TrainConfig) as bench.py parses its command line."""
    return bench.parse_bench_args([str(ROOT / 'config' / 'test.py'), '--device=cpu', '--dtype=float32',
                                   '--gen_tokens=8', '--repeats=1', '--train_steps=1', *extra])


def test_generation_and_training_report(capsys):
    rep = bench.main(*bench_cfg('--what=all', '--positions=64', '--gen_compile=false',
                                '--train_dtypes=float32,bfloat16'), ['--what=all'])
    gen = rep['generation']
    assert gen['gpt_tokens_per_s'] > 0 and gen['calm_tokens_per_s'] > 0 and gen['reference_nocache_tokens_per_s'] > 0
    assert abs(sum(gen['calm_time_share'].values()) - 1) < 0.01
    ms = gen['weight_read_ms']
    assert ms['gpt'] > 0 and ms['calm'] > 0
    assert gen['measured_weight_bound_speedup'] == pytest.approx(rep['sizes']['chunk_size'] * ms['gpt'] / ms['calm'])
    tps = rep['training']['train_tokens_per_s']
    assert set(tps) == {f'{m}_{d}' for m in ('reference', 'gpt', 'calm') for d in ('float32', 'bfloat16')}
    assert 'gpt_bfloat16_over_reference_float32' in rep['training']['ratios']
    assert set(rep['training'].get('minor_page_faults_per_step', tps)) == set(tps)
    assert rep['memory']['ours_peak_mib'] >= 0 and rep['memory']['naive_peak_mib'] > 0
    assert '"speedup"' in capsys.readouterr().out


def test_minor_page_faults_counts_fresh_memory():
    """The page-fault figure of the training bench counts something: writing 64 MiB that the OS has
    not mapped yet (a fresh mmap, far above glibc's mmap threshold) faults at least once per 2 MiB
    (once per 4 KiB page without transparent huge pages)."""
    pytest.importorskip('resource')
    f0 = bench.minor_page_faults()
    x = torch.ones(16 << 20)                       # 64 MiB of float32, written
    assert bench.minor_page_faults() - f0 >= 32, "minor_page_faults() did not see fresh memory being mapped"
    del x


def test_params_read_per_step_by_hand():
    _, cfg = bench_cfg()
    gpt, calm, _ = bench.models(cfg, torch.device('cpu'))
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


def test_reference_is_causal_and_about_the_baselines_size():
    """The yardstick: a future token never changes an earlier logit; parameters within 10% of the baseline's."""
    _, cfg = bench_cfg()
    gpt, _, ref = bench.models(cfg, torch.device('cpu'))
    x = torch.randint(cfg.vocab_size, (2, 12))
    y = x.clone()
    y[:, 7:] = (y[:, 7:] + 1) % cfg.vocab_size
    torch.testing.assert_close(ref(x)[0][:, :7], ref(y)[0][:, :7])
    assert not torch.allclose(ref(x)[0][:, 7:], ref(y)[0][:, 7:])
    n = lambda m: sum(p.numel() for p in m.parameters())
    assert abs(n(ref) / n(gpt) - 1) < 0.1, (n(ref), n(gpt))
    out = ref.generate(x[:, :3], 5, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 8) and torch.equal(out[:, :3], x[:, :3])


def test_profile_of_training_steps(capsys):
    """--what=profile --profile=training: the reference's and the baseline's training steps, each with a
    top-5 table and its self time per step by op class (the classes add up to the total)."""
    rep = bench.main(*bench_cfg('--what=profile', '--profile=training'), ['--what=profile'])
    assert set(rep['profile']) == {'training'}
    for name in ('reference', 'gpt'):
        r = rep['profile']['training'][name]
        assert 'Self CPU' in r['table'] and r['matmul_calls_per_step'] > 0
        ms = r['self_cpu_ms_per_step']
        assert ms['matmul'] > 0 and ms['attention'] > 0
        assert abs(sum(v for k, v in ms.items() if k != 'total') - ms['total']) < 0.01
    assert 'training, reference' in capsys.readouterr().err      # the tables; stdout stays JSON


def test_op_classes():
    assert [bench.op_class(n) for n in ('aten::mm', 'aten::addmm', 'aten::_scaled_dot_product_flash_attention_for_cpu',
                                        '## Call CompiledFxGraph fabc ##', 'TorchDynamo Cache Lookup', 'aten::mul')] == \
        ['matmul', 'matmul', 'attention', 'compiled_kernels', 'guard_check', 'other']


def test_bench_flags_are_checked():
    """A bad choice is refused with the valid ones, before any model is built."""
    from calm_min.config import ConfigError
    for flag, msg in (('--gen_cudagraphs=maybe', 'gen_cudagraphs must be auto, true or false'),
                      ('--train_compile=yes', 'train_compile must be auto, true, false or both'),
                      ('--what=speed', 'what must be all, generation')):
        with pytest.raises(ConfigError, match=msg):
            bench_cfg(flag)                                   # parse_args validates
