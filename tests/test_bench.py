"""bench.py at the test sizes: it runs, its weight accounting matches the configs, and the naive
energy loss it compares memory against computes the same loss."""
import dataclasses

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
    rep = bench.main(*bench_cfg('--what=all', '--positions=64', '--gen_compile=false', '--gen_batch=2',
                                '--train_dtypes=float32,bfloat16'), ['--what=all'])
    gen = rep['generation']
    assert gen['gpt_tokens_per_s'] > 0 and gen['calm_tokens_per_s'] > 0 and gen['reference_nocache_tokens_per_s'] > 0
    assert all(gen[f'{m}_tokens_per_s'] == pytest.approx(2 * 8 / t) for m, t in gen['seconds'].items())  # batch 2
    assert abs(sum(gen['calm_time_share'].values()) - 1) < 0.01
    assert set(gen['ratios_by_round']) == {'gpt_over_reference', 'calm_over_reference', 'speedup'}
    assert all(r['rounds'] == 1 for r in gen['ratios_by_round'].values())          # --repeats=1
    assert gen['ratios_by_round']['speedup']['median'] == pytest.approx(gen['speedup'])
    ms = gen['weight_read_ms']
    assert ms['gpt'] > 0 and ms['calm'] > 0
    assert gen['measured_weight_bound_speedup'] == pytest.approx(rep['sizes']['chunk_size'] * ms['gpt'] / ms['calm'])
    tps = rep['training']['train_tokens_per_s']
    assert set(tps) == {f'{m}_{d}' for m in ('reference', 'gpt', 'calm') for d in ('float32', 'bfloat16')}
    assert 'gpt_bfloat16_over_reference_float32' in rep['training']['ratios']
    by_round = rep['training']['ratios_by_round']   # one ratio per round (--repeats=1 here)
    assert set(by_round) == set(rep['training']['ratios'])
    assert all(r['rounds'] == 1 and r['lowest'] == r['median'] == r['highest'] for r in by_round.values())
    assert set(rep['training'].get('minor_page_faults_per_step', tps)) == set(tps)
    mem = rep['memory']
    assert mem['ours_peak_mib'] >= 0 and mem['naive_peak_mib'] > 0
    assert mem['naive_over_ours'] == pytest.approx(mem['naive_peak_mib'] / max(mem['ours_peak_mib'], 1e-9))
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
                      ('--what=speed', 'what must be all, generation'),
                      ('--what=ablations', 'profile or ablation; got'),
                      ('--what=ablation --train_compile=both', 'ablation times eager steps only'),
                      ('--gen_ref_dtype=fp32', 'gen_ref_dtype must be float32 or bfloat16')):
        with pytest.raises(ConfigError, match=msg):
            bench_cfg(*flag.split())                          # parse_args validates


def test_generation_reference_dtype():
    """--dtype casts the reference with the models, unless --gen_ref_dtype keeps it apart (the report
    reads each dtype off the weights that ran)."""
    for extra, ref_dtype in (((), 'bfloat16'), (('--gen_ref_dtype=float32',), 'float32')):
        bcfg, cfg = bench_cfg('--what=generation', '--gen_compile=false', *extra)
        gen = bench.main(bcfg, dataclasses.replace(cfg, dtype='bfloat16'))['generation']
        assert (gen['dtype'], gen['reference_dtype']) == ('bfloat16', ref_dtype)


def test_generation_figures_by_hand():
    """Every generation figure from made-up best times: tokens/s, speedups, CALM's speedup against the
    weight-read bounds, the compiled and CUDA-graph ratios."""
    best = {'reference_nocache': 8.0, 'gpt': 2.0, 'calm': 0.5, 'gpt_compiled': 1.0, 'calm_compiled': 0.25,
            'gpt_cudagraphs': 0.5, 'calm_cudagraphs': 0.2}
    r = bench.generation_figures(best, 2 * 256, 4, {'gpt': 1000, 'calm': 500}, {'gpt': 2.0, 'calm': 1.6})
    assert [r[f'{m}_tokens_per_s'] for m in ('reference_nocache', 'gpt', 'calm')] == pytest.approx([64, 256, 1024])
    assert r['gpt_over_reference'] == 4 and r['calm_over_reference'] == 16 and r['calm_compiled_over_reference'] == 32
    assert 'reference_nocache_over_reference' not in r
    assert r['speedup'] == 4                                                  # CALM over the baseline
    assert r['weight_bound_speedup'] == 8                                     # K x 1000 / 500
    assert r['measured_weight_bound_speedup'] == pytest.approx(5)             # K x 2.0 / 1.6
    assert r['speedup_compiled'] == 4
    assert r['compiled_fraction_of_weight_bound'] == 0.5
    assert r['compiled_fraction_of_measured_weight_bound'] == pytest.approx(0.8)
    assert r['speedup_cudagraphs'] == pytest.approx(2.5)
    assert r['cudagraphs_over_compiled'] == pytest.approx({'gpt': 2.0, 'calm': 1.25})
    eager = bench.generation_figures({k: best[k] for k in ('reference_nocache', 'gpt', 'calm')}, 512, 4,
                                     {'gpt': 1000, 'calm': 500}, {'gpt': 2.0, 'calm': 1.6})
    assert 'speedup_compiled' not in eager and 'speedup_cudagraphs' not in eager


def test_generation_ratios_by_round_by_hand():
    """Round by round, each variant's time over the reference's in the same round, and CALM's over the
    baseline's (eager, compiled): median, lowest, highest. Here the compiled CALM's best time (0.1)
    comes from the round in which the reference was slow, so the best-time ratio (40) is twice the
    median round's (20)."""
    rounds = {'reference_nocache': [8.0, 4.0, 4.0], 'gpt': [2.0, 1.0, 2.0], 'calm': [1.0, 0.5, 0.5],
              'gpt_compiled': [0.5, 0.4, 0.4], 'calm_compiled': [0.4, 0.2, 0.1]}
    best = {k: min(v) for k, v in rounds.items()}
    r = bench.generation_figures(best, 256, 4, {'gpt': 1000, 'calm': 500}, {'gpt': 2.0, 'calm': 1.6}, rounds)
    assert r['calm_compiled_over_reference'] == 40
    q = r['ratios_by_round']
    assert set(q) == {'gpt_over_reference', 'calm_over_reference', 'gpt_compiled_over_reference',
                      'calm_compiled_over_reference', 'speedup', 'speedup_compiled'}
    assert q['calm_compiled_over_reference'] == {'median': 20.0, 'lowest': 20.0, 'highest': 40.0, 'rounds': 3}
    assert q['gpt_over_reference'] == {'median': 4.0, 'lowest': 2.0, 'highest': 4.0, 'rounds': 3}
    assert q['speedup'] == {'median': 2.0, 'lowest': 2.0, 'highest': 4.0, 'rounds': 3}
    assert q['speedup_compiled'] == {'median': 2.0, 'lowest': 1.25, 'highest': 4.0, 'rounds': 3}
    assert 'ratios_by_round' not in bench.generation_figures(best, 256, 4, {'gpt': 1000, 'calm': 500},
                                                            {'gpt': 2.0, 'calm': 1.6})


def test_training_figures_by_hand():
    """Tokens/s, each model over the reference of its own dtype and compile setting, and every variant
    over the first reference timed; a run of compiled variants alone (--train_compile=true, or auto on
    CUDA) measures against the compiled reference."""
    best = {'reference_float32': 4.0, 'gpt_float32': 5.0, 'calm_float32': 2.0,
            'reference_float32_compiled': 2.0, 'gpt_float32_compiled': 2.5, 'calm_float32_compiled': 1.0}
    tokens = {k: 1024 if k.startswith('calm') else 1000 for k in best}
    r = bench.training_figures(best, tokens)
    assert r['train_tokens_per_s'] == pytest.approx({k: tokens[k] / t for k, t in best.items()})
    assert r['train_tokens_per_s']['gpt_float32'] == 200
    q = r['ratios']
    assert q['gpt_float32_over_reference_float32'] == 0.8 and q['calm_float32_over_reference_float32'] == 2
    assert q['gpt_float32_compiled_over_reference_float32_compiled'] == 0.8
    assert q['gpt_float32_compiled_over_reference_float32'] == 1.6
    assert q['reference_float32_compiled_over_reference_float32'] == 2
    compiled = bench.training_figures({k: t for k, t in best.items() if 'compiled' in k}, tokens)
    assert compiled['ratios'] == {'gpt_float32_compiled_over_reference_float32_compiled': 0.8,
                                  'calm_float32_compiled_over_reference_float32_compiled': 2.0}
    assert 'ratios_by_round' not in r


def test_training_ratios_by_round_by_hand():
    """Round by round, each model's time over its own reference's in the same round: the median,
    lowest and highest of those ratios, which the best times alone do not give (here the best-time
    ratio is 1.0, the rounds' 0.8, 1.0 and 2.0)."""
    rounds = {'reference_float32': [4.0, 2.0, 6.0], 'gpt_float32': [5.0, 2.0, 3.0],
              'reference_bfloat16': [1.0, 1.0, 1.0], 'gpt_bfloat16': [2.0, 0.5, 4.0]}
    best = {k: min(v) for k, v in rounds.items()}
    r = bench.training_figures(best, {k: 1 for k in best}, rounds)
    assert r['ratios']['gpt_float32_over_reference_float32'] == 1.0
    by_round = r['ratios_by_round']
    assert set(by_round) == set(r['ratios'])
    assert by_round['gpt_float32_over_reference_float32'] == {'median': 1.0, 'lowest': 0.8, 'highest': 2.0,
                                                             'rounds': 3}
    assert by_round['gpt_bfloat16_over_reference_bfloat16'] == {'median': 0.5, 'lowest': 0.25, 'highest': 2.0,
                                                               'rounds': 3}
    assert by_round['gpt_bfloat16_over_reference_float32'] == {'median': 2.0, 'lowest': 1.5, 'highest': 4.0,
                                                              'rounds': 3}
    assert by_round['reference_bfloat16_over_reference_float32'] == {'median': 4.0, 'lowest': 2.0, 'highest': 6.0,
                                                                    'rounds': 3}


@pytest.mark.parametrize('kind', ['gpt', 'calm'])
def test_training_step_trains_on_the_shifted_window(kind):
    """bench's training step feeds each model (x, x moved on by one prediction step) and counts the
    tokens of text one step trains on as train.py does (batch x block, whole chunks)."""
    _, cfg = bench_cfg('--block_size=30')
    gpt, calm, _ = bench.models(cfg, torch.device('cpu'))
    model = {'gpt': gpt, 'calm': calm}[kind]
    seen = []
    real = model.forward
    model.forward = lambda x, targets=None, generator=None: seen.append((x, targets)) or real(x, targets, generator)
    step = bench._train_step(cfg, torch.device('cpu'), model, 'float32', False, torch.Generator().manual_seed(0))
    step()
    s = model.tokens_per_step
    (x, y), = seen
    assert x.shape == y.shape and torch.equal(y[:, :-s], x[:, s:])
    assert step.tokens == cfg.batch_size * (30 // s * s)


class _Event:
    def __init__(self, key, us, count):
        self.key, self.self_cpu_time_total, self.count = key, us, count


def test_profiled_figures_are_per_step(monkeypatch):
    """`profiled`'s arithmetic on a profiler that reports fixed times: self time per step by op class
    (us -> ms, divided by the steps), matrix-product calls per step."""
    events = [_Event('aten::mm', 6000.0, 12), _Event('aten::addmm', 3000.0, 6),
              _Event('aten::_scaled_dot_product_flash_attention_for_cpu', 1500.0, 3), _Event('aten::mul', 600.0, 30)]

    class FakeProfile:
        def __init__(self, **_):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

        def key_averages(self):
            class Averages(list):
                def table(self, **_):
                    return 'the table'
            return Averages(events)
    import torch.profiler
    monkeypatch.setattr(torch.profiler, 'profile', FakeProfile)
    r = bench.profiled(lambda: None, 3, torch.device('cpu'))
    assert r['self_cpu_ms_per_step'] == {'matmul': 3.0, 'attention': 0.5, 'other': 0.2, 'total': 3.7}
    assert r['matmul_calls_per_step'] == 6 and r['steps'] == 3 and r['table'] == 'the table'


def test_flops_figures_are_the_models_own():
    _, cfg = bench_cfg()
    gpt, calm, _ = bench.models(cfg, torch.device('cpu'))
    r = bench.bench_flops(cfg, gpt, calm)
    ctx = cfg.block_size // cfg.chunk_size * cfg.chunk_size
    g, c = gpt.flops_per_token(ctx), calm.flops_per_token(ctx)
    assert r['context_tokens'] == ctx
    assert r['calm_over_gpt_inference'] == pytest.approx(c['inference'] / g['inference'])
    assert r['calm_over_gpt_training'] == pytest.approx(c['training'] / g['training'])


def test_training_figures_also_over_the_baseline_by_hand():
    """`also_over`: every variant but a reference also set over the named one, by best times and round
    by round (the ablation sets each swapped baseline over the baseline)."""
    rounds = {'reference_float32': [4.0, 4.0, 4.0], 'gpt_float32': [5.0, 4.0, 8.0], 'gpt-x_float32': [2.5, 4.0, 2.0]}
    best = {k: min(v) for k, v in rounds.items()}
    r = bench.training_figures(best, {k: 1 for k in best}, rounds, also_over='gpt_float32')
    assert set(r['ratios']) == {'gpt_float32_over_reference_float32', 'gpt-x_float32_over_reference_float32',
                                'gpt-x_float32_over_gpt_float32'}
    assert r['ratios']['gpt-x_float32_over_gpt_float32'] == 2.0                     # 4.0 / 2.0
    assert r['ratios_by_round']['gpt-x_float32_over_gpt_float32'] == {'median': 2.0, 'lowest': 1.0, 'highest': 4.0,
                                                                      'rounds': 3}


def test_ablated_baselines_swap_what_they_say():
    """Each ablation puts the reference's layers in a copy of the baseline and leaves the baseline as it
    was; with all three swapped, the copy is the reference less its attention biases (4d per layer)."""
    from calm_min.backbone import RMSNorm, SwiGLU
    _, cfg = bench_cfg()
    gpt, _, ref = bench.models(cfg, torch.device('cpu'))
    before = {k: v.clone() for k, v in gpt.state_dict().items()}
    kinds = lambda m: {type(x) for x in m.modules()}
    n = lambda m: sum(p.numel() for p in m.parameters())
    window = gpt.train_window(cfg.block_size)
    for name, swaps in bench.ABLATIONS.items():
        m = bench.ablated(gpt, swaps, window)
        assert (RMSNorm in kinds(m)) != ('norm' in swaps) and (torch.nn.LayerNorm in kinds(m)) == ('norm' in swaps), name
        assert (SwiGLU in kinds(m)) != ('mlp' in swaps) and (torch.nn.GELU in kinds(m)) == ('mlp' in swaps), name
        assert torch.equal(m.tok_emb.weight, gpt.tok_emb.weight) and hasattr(m.tok_emb, 'pos') == ('positions' in swaps)
        assert m.lm_head(torch.ones(cfg.n_embd)).shape == (cfg.vocab_size,)          # the head reads the token table
    full = bench.ablated(gpt, bench.ABLATIONS['gpt2-layers'], window)
    assert n(ref) - n(full) == cfg.n_layer * 4 * cfg.n_embd
    assert all(torch.equal(before[k], v) for k, v in gpt.state_dict().items())
    assert kinds(gpt) >= {RMSNorm, SwiGLU}


def test_learned_positions_carry_the_order_without_rope():
    """The learned-positions variant's backbone runs without rotary embeddings (inside rope_off()). With
    one layer and its position table zeroed, its last position cannot tell two orders of the tokens
    before it apart; with the table, it can, and so can the baseline, through RoPE, after the variant
    ran. rope_off restores RoPE also when what runs inside it raises."""
    import calm_min.backbone as backbone_module
    _, cfg = bench_cfg('--n_layer=1')
    gpt, _, _ = bench.models(cfg, torch.device('cpu'))
    x = torch.tensor([[3, 5, 7, 9]])
    y = torch.tensor([[5, 3, 7, 9]])                                  # the first two swapped
    last = lambda m, t: m(t)[0][0, -1]
    rope = backbone_module.rope
    m = bench.ablated(gpt, ('positions',), gpt.train_window(cfg.block_size))
    assert not torch.allclose(last(m, x), last(m, y), atol=1e-6)     # the learned table: order seen
    with torch.no_grad():
        m.tok_emb.pos.weight.zero_()
    torch.testing.assert_close(last(m, x), last(m, y))               # no table, no RoPE: order unseen
    assert backbone_module.rope is rope
    assert not torch.allclose(last(gpt, x), last(gpt, y), atol=1e-6)  # the baseline: RoPE
    with pytest.raises(RuntimeError), bench.rope_off():
        assert backbone_module.rope is not rope
        raise RuntimeError
    assert backbone_module.rope is rope


def test_ablation_report(capsys):
    """--what=ablation: every variant's training figures in each dtype, each over the reference and
    over the baseline, round by round, and a table on stderr (stdout stays JSON)."""
    rep = bench.main(*bench_cfg('--what=ablation', '--train_dtypes=float32,bfloat16'), ['--what=ablation'])['ablation']
    names = ['gpt'] + [f'gpt-{a}' for a in bench.ABLATIONS]
    assert set(rep['params']) == set(names)
    for d in ('float32', 'bfloat16'):
        assert set(rep[d]['train_tokens_per_s']) == {f'{m}_{d}' for m in ['reference'] + names}
        by_round = rep[d]['ratios_by_round']
        for m in names[1:]:
            assert by_round[f'{m}_{d}_over_gpt_{d}']['rounds'] == 1
            assert by_round[f'{m}_{d}_over_reference_{d}']['median'] == pytest.approx(
                rep[d]['ratios'][f'{m}_{d}_over_reference_{d}'])                        # one round: the best times
    err = capsys.readouterr().err
    assert 'ablation, float32' in err and 'gpt-gpt2-layers' in err
