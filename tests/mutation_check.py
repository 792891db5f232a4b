"""Plants each bug that tests/test_guards.py and tests/test_extensions.py exist for, and one that
tests/test_backbone.py's RMSNorm test exists for, one at a time, runs those files, and restores the
code: every line must say CAUGHT. Run from the repository root:

    python tests/mutation_check.py
"""
import subprocess
import sys

M = [
 ('1 targets = mu', 'calm_min/calm.py', "return self.ae.sample_latent(mu.float(), log_sigma.float(), self.cfg.n_targets, generator), mu", "return mu.float().expand(self.cfg.n_targets, *mu.shape), mu"),
 ('1b sample_latent = mu', 'calm_min/autoencoder.py', "return mu + log_sigma.exp() * eps", "return mu + 0 * eps"),
 ('2 gpt ignores T', 'calm_min/gpt.py', "T, k = sampler.temperature, sampler.top_k", "T, k = 1.0, sampler.top_k"),
 ('3 weights_only=False', 'calm_min/checkpoint.py', "weights_only=True", "weights_only=False"),
 ('4 val docs in train', 'calm_min/data.py', "if (i % VAL_EVERY == VAL_EVERY // 2) == (split == 'val'):",
  "if split == 'train' or i % VAL_EVERY == VAL_EVERY // 2:"),
 ('5 mask_id 0', 'train.py', "cfg.ae_config(vocab_size, mask_id=eot_id)", "cfg.ae_config(vocab_size, mask_id=0)"),
 ('6 fp16 autocast', 'calm_min/device.py', "dtype=torch.bfloat16", "dtype=torch.float16"),
 ('7 accum no divide', 'train.py', "(loss / cfg.grad_accum).backward()", "loss.backward()"),
 ('8 collision prefix', 'calm_min/brierlm.py', "same_prefix = torch.cat([torch.ones_like(a[..., :1]), (a == b).long().cumprod(-1)[..., :-1]], -1)", "same_prefix = (a == b).long().cumprod(-1)"),
 ('9 RMSNorm backward as LayerNorm', 'calm_min/backbone.py', "dx.add_(rstd * (dy @ weight).unsqueeze(-1), alpha=1 / x.shape[-1])", "pass"),
]
missed = 0
for name, path, a, b in M:
    src = open(path).read()
    assert a in src, (name, a)
    open(path, 'w').write(src.replace(a, b))
    try:
        r = subprocess.run([sys.executable, '-m', 'pytest', '-q', '-x', '-p', 'no:cacheprovider', 'tests/test_guards.py', 'tests/test_extensions.py',
                            'tests/test_backbone.py'],
                           capture_output=True, text=True)
        last = [l for l in r.stdout.splitlines() if 'FAILED' in l][:2]
        print(f"{name}: {'CAUGHT' if r.returncode else 'MISSED'} {last}", flush=True)
        missed += r.returncode == 0
    finally:
        open(path, 'w').write(src)
sys.exit(1 if missed else 0)
