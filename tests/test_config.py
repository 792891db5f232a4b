import dataclasses
from dataclasses import dataclass

import pytest

from calm_min.config import ConfigError, EvalConfig, SampleConfig, TrainConfig, help_text, parse_args
from conftest import ROOT


def test_defaults_and_overrides():
    cfg = parse_args(['--n_layer=3', '--lr=0.001', '--compile=false', '--resume=true'], TrainConfig)
    assert cfg.n_layer == 3 and cfg.lr == 1e-3 and cfg.resume is True
    assert parse_args([], TrainConfig) == TrainConfig()
    assert parse_args(['--max-iters=7', '--ae_max_iters=5'], TrainConfig).max_iters == 7   # - or _ in a key


def test_int_coerced_to_float():
    cfg = parse_args(['--lr=1', '--alpha=2'], TrainConfig)
    assert isinstance(cfg.lr, float) and cfg.lr == 1.0 and cfg.alpha == 2.0


def test_bad_types_rejected_with_message():
    with pytest.raises(ConfigError, match='--n_layer expects an integer'):
        parse_args(['--n_layer=2.5'], TrainConfig)
    with pytest.raises(ConfigError, match='--resume expects a boolean'):
        parse_args(['--resume=maybe'], TrainConfig)
    with pytest.raises(ConfigError, match='--key=value'):
        parse_args(['--n_layer', '3'], TrainConfig)


def test_unknown_key_lists_valid_ones():
    with pytest.raises(ConfigError) as e:
        parse_args(['--n_layers=3'], TrainConfig)
    msg = str(e.value)
    assert 'unknown option --n_layers' in msg and 'did you mean --n_layer' in msg
    assert 'Valid options:' in msg and 'block_size' in msg


def test_values_validated():
    with pytest.raises(ConfigError, match='--n_embd must be positive'):
        parse_args(['--n_embd=0'], TrainConfig)
    with pytest.raises(ConfigError, match='divisible'):
        parse_args(['--n_embd=100', '--n_head=3'], TrainConfig)
    with pytest.raises(ConfigError, match='--model must be one of'):
        parse_args(['--model=bert'], TrainConfig)
    with pytest.raises(ConfigError, match='--n_samples must be >= 2'):
        parse_args(['--n_samples=1'], TrainConfig)
    with pytest.raises(ConfigError, match='--alpha'):
        parse_args(['--alpha=3'], TrainConfig)
    with pytest.raises(ConfigError, match='--token_dropout'):
        parse_args(['--token_dropout=1.5'], TrainConfig)
    with pytest.raises(ConfigError, match='block_size >= 5'):        # K = 1: a chunk of context + 4 tokens
        parse_args(['--model=calm', '--chunk_size=1', '--block_size=4'], TrainConfig)
    with pytest.raises(ConfigError, match='block_size >= 16'):       # K = 8: two chunks
        parse_args(['--model=calm', '--chunk_size=8', '--block_size=12'], TrainConfig)
    assert parse_args(['--model=calm', '--chunk_size=2', '--block_size=6'], TrainConfig).block_size == 6
    with pytest.raises(ConfigError, match='temperature must be a finite number > 0'):
        parse_args(['--temperature=0'], SampleConfig)


@pytest.mark.parametrize('preset', sorted((ROOT / 'config').glob('*.py')), ids=lambda p: p.name)
def test_preset_files_load(preset):
    cfg = parse_args([str(preset)], TrainConfig)
    cfg.validate()


def test_preset_then_flag_order(tmp_path):
    p = tmp_path / 'p.py'
    p.write_text('n_layer = 5\nlr = 1  # an int for a float field\n')
    cfg = parse_args([str(p), '--n_layer=7'], TrainConfig)
    assert cfg.n_layer == 7 and cfg.lr == 1.0
    # a flag before the preset still wins: presets first, then flags, whatever the order on the line
    assert parse_args(['--n_layer=3', str(p)], TrainConfig).n_layer == 3


def test_finite_numbers_and_ranges(tmp_path):
    for flag, match in (('--lr=nan', 'finite'), ('--grad_clip=nan', 'finite'), ('--min_lr_ratio=inf', 'finite'),
                        ('--beta2=1.0', r'\[0, 1\)'), ('--min_lr_ratio=2', r'\[0, 1\]'), ('--out_dir=', 'empty'),
                        ('--kl_beta=-inf', 'finite'), ('--rope_theta=0', 'positive')):
        with pytest.raises(ConfigError, match=match):
            parse_args([flag], TrainConfig)


def test_preset_errors(tmp_path):
    with pytest.raises(ConfigError, match='not found'):
        parse_args([str(tmp_path / 'missing.py')], TrainConfig)
    p = tmp_path / 'bad.py'
    p.write_text('n_layerz = 5\n')
    with pytest.raises(ConfigError, match='unknown option --n_layerz'):
        parse_args([str(p)], TrainConfig)
    p.write_text('n_layer = "five"\n')
    with pytest.raises(ConfigError, match='n_layer must be an integer'):
        parse_args([str(p)], TrainConfig)


def test_other_configs_parse():
    assert parse_args(['--ckpt=x.pt', '--temperature=0.5'], SampleConfig).temperature == 0.5
    assert parse_args(['--split=test', '--context=128'], EvalConfig).context == 128


def test_help_lists_options_and_exits_cleanly(capsys):
    with pytest.raises(SystemExit) as e:
        parse_args(['--help'], TrainConfig)
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert '--n_layer=4' in out and '--ae_ckpt' in out
    lines = out.splitlines()
    n_samples = next(l for l in lines if l.lstrip().startswith('--n_samples='))
    assert n_samples.split()[1:] == 'N model samples per position'.split()   # the field's own comment
    assert '  # energy head and loss (stage 2; docs/method.md section 4)' in lines   # its group heading


@dataclass
class _Documented:
    # first group
    a: int = 1                   # the first option
    b: str = '# not a comment'   # a hash inside the default; this comment
                                 # goes on here
    # second group
    # in two lines
    c: float = 0.5
    d: bool = False  # a comment at another column

    def validate(self):          # a method's comment is no option's
        pass


def test_help_shows_each_options_comment_and_group_headings():
    assert help_text(_Documented).splitlines()[2:] == [
        '  # first group',
        "  --a=1                            the first option",
        "  --b='# not a comment'            a hash inside the default; this comment goes on here",
        '  # second group',
        '  # in two lines',
        '  --c=0.5',
        '  --d=False                        a comment at another column',
    ]


def test_a_leading_tilde_in_a_path_flag_is_the_home_folder(monkeypatch, tmp_path):
    """A shell leaves `--out_dir=~/x` alone; the parser expands the ~ of path flags (each item of a
    comma-separated list) as the shell would have, and leaves every other flag's text as it is."""
    monkeypatch.setenv('HOME', str(tmp_path))
    cfg = parse_args(['--out_dir=~/runs', '--dataset=~/corpus.txt', '--data_dir=data~cache'], TrainConfig)
    assert (cfg.out_dir, cfg.dataset, cfg.data_dir) == (f'{tmp_path}/runs', f'{tmp_path}/corpus.txt', 'data~cache')
    s = parse_args(['--ckpt=~/calm.pt', '--prompt=~not a path'], SampleConfig)
    assert s.ckpt == f'{tmp_path}/calm.pt' and s.prompt == '~not a path'
    from experiments.learning_curves import Config as Curves
    assert parse_args(['--runs=~/a,b,~/c'], Curves).runs == f'{tmp_path}/a,b,{tmp_path}/c'
    (tmp_path / 'p.py').write_text('n_layer = 3\n')
    assert parse_args(['~/p.py'], TrainConfig).n_layer == 3          # a preset's path too


def test_every_model_flag_reaches_its_model_config():
    """Each field of the model configs comes from its flag (a value no default has, so a flag that
    is read but dropped shows), and a model config field with no flag here fails the test."""
    from calm_min.autoencoder import AEConfig
    from calm_min.backbone import BackboneConfig
    from calm_min.calm import CALMConfig
    flags = {'n_layer': 3, 'n_head': 2, 'n_embd': 96, 'ffn_hidden': 160, 'rope_theta': 500.0, 'chunk_size': 2,
             'latent_size': 12, 'ae_dim': 48, 'ae_hidden': 80, 'ae_blocks': 2, 'token_dropout': 0.05,
             'latent_dropout': 0.07, 'kl_clip': 0.3, 'kl_beta': 0.02, 'head_blocks': 3, 'noise_size': 24,
             'n_samples': 5, 'n_targets': 33, 'alpha': 1.5, 'aux_ce': 0.2}
    cfg = parse_args([f'--{k}={v}' for k, v in flags.items()], TrainConfig)
    assert all(getattr(TrainConfig(), k) != v for k, v in flags.items())     # none is a default
    where = {BackboneConfig: {'n_layer': 'n_layer', 'n_head': 'n_head', 'n_embd': 'n_embd',
                              'ffn_hidden': 'ffn_hidden', 'rope_theta': 'rope_theta'},
             AEConfig: {'chunk_size': 'chunk_size', 'latent_size': 'latent_size', 'dim': 'ae_dim',
                        'hidden': 'ae_hidden', 'n_blocks': 'ae_blocks', 'token_dropout': 'token_dropout',
                        'latent_dropout': 'latent_dropout', 'kl_clip': 'kl_clip', 'kl_beta': 'kl_beta'},
             CALMConfig: {'head_blocks': 'head_blocks', 'noise_size': 'noise_size', 'n_samples': 'n_samples',
                          'n_targets': 'n_targets', 'alpha': 'alpha', 'aux_ce': 'aux_ce'}}
    built = {BackboneConfig: cfg.backbone_config(), AEConfig: cfg.ae_config(300, mask_id=7),
             CALMConfig: cfg.calm_config()}
    assert built[AEConfig].vocab_size == 300 and built[AEConfig].mask_id == 7
    assert cfg.gpt_config(300).backbone == built[BackboneConfig] == built[CALMConfig].backbone
    for cls, fields_of in where.items():
        names = {f.name for f in dataclasses.fields(cls)} - {'vocab_size', 'mask_id', 'backbone'}
        assert names == set(fields_of), (cls.__name__, names ^ set(fields_of))
        for field, flag in fields_of.items():
            assert getattr(built[cls], field) == flags[flag], (cls.__name__, field)
    sampling = {'temperature': 0.5, 'top_k': 7, 'sampler': 'exact', 'num_candidates': 33, 'max_draws': 999}
    s = parse_args([f'--{k}={v}' for k, v in sampling.items()], SampleConfig).make_sampler()
    assert (s.temperature, s.top_k, s.method, s.num_candidates, s.max_draws) == tuple(sampling.values())


@pytest.mark.parametrize('flags,match', [
    (['--n_embd=60', '--n_head=4'], 'even head size'),                   # 15 per head: RoPE rotates pairs
    (['--tokenizer=bpe', '--vocab_size=259'], 'vocab_size must be >= 260'),
    (['--resume=true', '--overwrite=true'], 'contradict'),
    (['--grad_clip=-1'], '--grad_clip must be >= 0'),
    (['--weight_decay=-0.1'], '--weight_decay must be >= 0'),
    (['--warmup_iters=-1'], '--warmup_iters must be >= 0'),
    (['--beta1=1.0'], '--beta1'),
])
def test_each_check_refuses_its_value(flags, match):
    """Every range check of TrainConfig.validate on its own (others: test_values_validated above)."""
    with pytest.raises(ConfigError, match=match):
        parse_args(flags, TrainConfig)
    parse_args(['--n_embd=64', '--n_head=4', '--tokenizer=bpe', '--vocab_size=260'], TrainConfig)   # the edges pass


def test_eval_and_sample_flags_are_checked_at_the_start():
    with pytest.raises(ConfigError, match='--bootstrap must be >= 2'):
        parse_args(['--bootstrap=1'], EvalConfig)
    with pytest.raises(ConfigError, match='--max_blocks must be >= 0'):
        parse_args(['--max_blocks=-1'], EvalConfig)
    with pytest.raises(ConfigError, match="sampling method must be 'batch'"):
        parse_args(['--sampler=beam'], SampleConfig)
