"""Plants plausible bugs in the mathematics and the plumbing, one at a time, runs the tests that exist
to catch each, and restores the code: every line must say CAUGHT (exit status 1 otherwise). Run from
the repository root (about 30 minutes on a 2-core CPU; the slow tier runs it too). It rewrites the files in place and
restores each before the next bug (also when interrupted), so run nothing else from this checkout
meanwhile:

    python tests/mutation_check.py            # all of them
    python tests/mutation_check.py B2 S3      # some, by id

Each entry: id and what the bug is, the file, the exact text replaced, its replacement, the tests.
A bug no test caught is a test to write: the entries after the first ten came from seven sweeps
that found 125 such gaps (docs/testing.md).
"""
import subprocess
import sys

GUARDS = ['tests/test_guards.py', 'tests/test_extensions.py']
# fails while any entry is planted (the file no longer holds the entry's text), so it would catch every
# bug of an entry that runs all of test_guards.py: each run leaves it out
STALE_GUARD = 'tests/test_guards.py::test_every_planted_bug_still_finds_its_line'
TRAIN_LOOP = 'tests/test_train.py::test_training_clips_validates_on_val_and_skips_an_infinite_gradient'
HASHES = 'tests/test_scripts.py::test_weights_changed_after_saving_are_refused'
FLAGS = 'tests/test_config.py::test_every_model_flag_reaches_its_model_config'
SAMPLES = 'tests/test_scripts.py::test_sample_returns_each_continuation_of_the_prompt'
POOLS = 'tests/test_calm.py::test_batch_sampler_pools_each_positions_own_draws'
ACCUM = 'tests/test_guards.py::test_grad_accum_equals_one_big_batch'
LOGGED = 'tests/test_train.py::test_logged_throughput_eta_and_flops_count_the_steps_since_the_last_record'
DEVICE = 'tests/test_guards.py::test_device_choices_by_hand'
BENCH_FIGURES = ['tests/test_bench.py::test_generation_figures_by_hand', 'tests/test_bench.py::test_training_figures_by_hand']
PROFILED = 'tests/test_bench.py::test_profiled_figures_are_per_step'
EXP_FIGURES = 'tests/test_experiments_figures.py'
DIAG_PAIRS = 'tests/test_diagnose.py::test_hidden_states_pair_with_the_chunk_after_them'
DIAG_REPORT = 'tests/test_diagnose.py::test_report_measures_what_it_names'
AE_TRAIN = 'tests/test_autoencoder.py::test_training_mode_scores_the_true_tokens'
UTF8 = 'tests/test_data.py::test_bytes_are_counted_in_utf8_and_each_document_ends_with_end_of_text'
AE_FIGURES = 'tests/test_eval.py::test_autoencoder_figures_count_tokens_chunks_and_kl_per_dimension'
M = [
 # the first ten: each has a test written for it (tests/test_guards.py, tests/test_extensions.py, RMSNorm)
 ('1 targets = mu', 'calm_min/calm.py', "return self.ae.sample_latent(mu.float(), log_sigma.float(), self.cfg.n_targets, generator), mu", "return mu.float().expand(self.cfg.n_targets, *mu.shape), mu", GUARDS),
 ('1b sample_latent = mu', 'calm_min/autoencoder.py', "return mu + log_sigma.exp() * eps", "return mu + 0 * eps", GUARDS),
 ('2 gpt ignores T', 'calm_min/gpt.py', "T, k = sampler.temperature, sampler.top_k", "T, k = 1.0, sampler.top_k", GUARDS),
 ('3 weights_only=False', 'calm_min/checkpoint.py', "weights_only=True", "weights_only=False", GUARDS),
 ('4 val docs in train', 'calm_min/data.py', "if (i % VAL_EVERY == VAL_EVERY // 2) == (split == 'val'):",
  "if split == 'train' or i % VAL_EVERY == VAL_EVERY // 2:", GUARDS),
 ('5 mask_id 0', 'train.py', "cfg.ae_config(vocab_size, mask_id=eot_id)", "cfg.ae_config(vocab_size, mask_id=0)", GUARDS),
 ('6 fp16 autocast', 'calm_min/device.py', "dtype=torch.bfloat16", "dtype=torch.float16", GUARDS),
 ('7 accum no divide', 'train.py', "(loss / cfg.grad_accum).backward()", "loss.backward()", GUARDS),
 ('8 collision prefix', 'calm_min/brierlm.py', "same_prefix = torch.cat([torch.ones_like(a[..., :1]), (a == b).long().cumprod(-1)[..., :-1]], -1)", "same_prefix = (a == b).long().cumprod(-1)", GUARDS),
 ('9 RMSNorm backward as LayerNorm', 'calm_min/backbone.py', "dx.add_(rstd * (dy @ weight).unsqueeze(-1), alpha=1 / x.shape[-1])", "pass", ['tests/test_backbone.py']),
 # the energy loss and head
 ('E1 fidelity weight 1/(NM)', 'calm_min/energy_head.py', "loss = 2.0 / (N * M) * fidelity", "loss = 1.0 / (N * M) * fidelity", ['tests/test_energy.py']),
 ('E2 diversity over N^2 pairs', 'calm_min/energy_head.py', "diversity / (N * (N - 1))", "diversity / (N * N)", ['tests/test_energy.py']),
 ('E3 alpha ignored', 'calm_min/energy_head.py', "    if alpha == 1.0:\n        return d", "    if True:\n        return d", ['tests/test_energy.py']),
 ('E4 diversity against the targets', 'calm_min/energy_head.py', "_pow_dist(torch.cdist(x, x, compute_mode=exact)", "_pow_dist(torch.cdist(x, y[:, :N], compute_mode=exact)", ['tests/test_energy.py']),
 ('E5 positions mixed', 'calm_min/energy_head.py', "x = samples.reshape(N, -1, D).transpose(0, 1).float()", "x = samples.reshape(-1, N, D).float()", ['tests/test_energy.py']),
 ('H1 noise U[0, 1]', 'calm_min/energy_head.py', "dtype=h.dtype) - 0.5", "dtype=h.dtype)", ['tests/test_energy.py']),
 ('H2 condition detached', 'calm_min/energy_head.py', "c = self.cond_norm(self.cond_in(h))", "c = self.cond_norm(self.cond_in(h.detach()))", ['tests/test_interface.py']),
 ('H3 output layer not zeroed', 'calm_min/energy_head.py', "        nn.init.zeros_(self.final_out.weight)", "        pass", ['tests/test_energy.py']),
 # CALM
 ('C1 predicts its own input chunk', 'calm_min/calm.py', "t = self.chunks(targets)                                              # (B, L, K)", "t = self.chunks(x)", ['tests/test_calm.py']),
 ('C2 prompt padded with 0', 'calm_min/calm.py', "fill = torch.full((prompt.shape[0], pad), self.ae.cfg.mask_id,", "fill = torch.full((prompt.shape[0], pad), 0,", ['tests/test_calm.py']),
 ('C3 rollouts see their chunk', 'calm_min/calm.py', "h = tree.hidden[:, starts - 1]", "h = tree.hidden[:, starts]", ['tests/test_brierlm.py']),
 ('C4 K >= 4 samples see their chunk', 'calm_min/calm.py', "h = self.hidden(x)[:, :-1]", "h = self.hidden(x)[:, 1:]", ['tests/test_brierlm.py']),
 ('C5 targets one chunk early', 'calm_min/calm.py', "'target': x[:, 1:, :NGRAM]}", "'target': x[:, :-1, :NGRAM]}", ['tests/test_brierlm.py']),
 ('C6 mean_err from one sample', 'calm_min/calm.py', "mean_err = (samples.float().mean(0) - mu.float())", "mean_err = (samples.float()[0] - mu.float())", ['tests/test_calm.py']),
 # BrierLM
 ('B1 collisions without the prefix', 'calm_min/brierlm.py', "collide = (sample_a == sample_b).long().cumprod(-1)", "collide = (sample_a == sample_b).long()", ['tests/test_brierlm.py']),
 ('B2 geometric mean exponent', 'calm_min/brierlm.py', "** (1.0 / NGRAM)", "** (1.0 / (NGRAM - 1))", ['tests/test_brierlm.py']),
 ('B3 no clamp at 0', 'calm_min/brierlm.py', "math.prod(max(v, 0.0) for v in vals)", "abs(math.prod(v for v in vals))", ['tests/test_brierlm.py']),
 ('B4 exact Brier with P(y) once', 'calm_min/brierlm.py', "return 2 * probs.gather", "return 1 * probs.gather", ['tests/test_brierlm.py']),
 ('B5 exact estimator collision twice', 'calm_min/brierlm.py', "return 2 * cont['p_target'] - collision", "return 2 * cont['p_target'] - collision * 2", ['tests/test_brierlm.py']),
 ('B6 bootstrap divides by all positions', 'calm_min/brierlm.py', "boot = sums[pick].sum(1) / counts[pick].sum(1, keepdim=True)", "boot = sums[pick].sum(1) / counts.sum()", ['tests/test_brierlm.py']),
 # sampling
 ('S1 Gumbel noise sign', 'calm_min/sampling.py', "return (logits - torch.log(-torch.log(u))).argmax(-1)", "return (logits + torch.log(-torch.log(u))).argmax(-1)", ['tests/test_sampling.py']),
 ('S2 top-k drops the k-th', 'calm_min/sampling.py', "logits.masked_fill(logits < kth", "logits.masked_fill(logits <= kth", ['tests/test_sampling.py']),
 ('S3 Bernoulli factory a/(i+1)', 'calm_min/sampling.py', "if float(u) < a / i:", "if float(u) < a / (i + 1):", ['tests/test_sampling.py']),
 ('S4 integer stage ceil(1/T)', 'calm_min/sampling.py', "    n = math.floor(inv + 1e-9)\n    a = inv - n if inv - n > 1e-9 else 0.0\n    used = 0",
  "    n = math.ceil(inv - 1e-9)\n    a = inv - math.floor(inv + 1e-9) if inv - math.floor(inv + 1e-9) > 1e-9 else 0.0\n    used = 0", ['tests/test_sampling.py']),
 ('S5 Algorithm 2 weight not shared by copies', 'calm_min/sampling.py', "- torch.lgamma((c - md).clamp_min(0) + 1) - c.log()", "- torch.lgamma((c - md).clamp_min(0) + 1)", ['tests/test_sampling.py']),
 ('S6 Algorithm 2 starts at level n + 1', 'calm_min/sampling.py', "m = count.max(-1, keepdim=True).values.clamp_max(n)", "m = count.max(-1, keepdim=True).values.clamp_max(n + 1)", ['tests/test_sampling.py']),
 ('S7 expected cost without the factory', 'calm_min/sampling.py', "extra = p.pow(inv - 1).sum() if a > 0 else 0.0", "extra = 0.0", ['tests/test_sampling.py']),
 # the backbone
 ('R1 cache mask hides the query itself', 'calm_min/backbone.py', "mask = torch.arange(start + T, device=k.device) <= (start", "mask = torch.arange(start + T, device=k.device) < (start", ['tests/test_backbone.py']),
 ('R2 attention not causal', 'calm_min/backbone.py', "is_causal = mask is None and T > 1\n", "is_causal = False\n", ['tests/test_backbone.py']),
 ('R3 rollout sees its target', 'calm_min/backbone.py', "self.ctx_mask = torch.arange(C, device=prefix.device)[None, :] < starts[:, None]", "self.ctx_mask = torch.arange(C, device=prefix.device)[None, :] <= starts[:, None]", ['tests/test_brierlm.py']),
 ('R4 rollout positions one on', 'calm_min/backbone.py', "pos=self.starts + self.steps - 1, mask=mask)", "pos=self.starts + self.steps, mask=mask)", ['tests/test_brierlm.py']),
 ('R5 RoPE frequencies', 'calm_min/backbone.py', "inv_freq = theta ** (-torch.arange(0, head_dim, 2, device=pos.device, dtype=torch.float32) / head_dim)", "inv_freq = theta ** (-torch.arange(0, head_dim, 2, device=pos.device, dtype=torch.float32) / head_dim / 2)", ['tests/test_backbone.py']),
 ('R6 residual projections not scaled', 'calm_min/backbone.py', "nn.init.normal_(p, std=0.02 / math.sqrt(2 * cfg.n_layer))", "pass", ['tests/test_backbone.py']),
 # the autoencoder
 ('A1 KL without its 1/2', 'calm_min/autoencoder.py', "kl = 0.5 * (mu.pow(2)", "kl = 1.0 * (mu.pow(2)", ['tests/test_autoencoder.py']),
 ('A2 KL clipped from above', 'calm_min/autoencoder.py', "clipped = kl.clamp_min(self.cfg.kl_clip)", "clipped = kl.clamp_max(self.cfg.kl_clip)", ['tests/test_autoencoder.py']),
 ('A3 latent dropout not rescaled', 'calm_min/autoencoder.py', "z = z * keep / (1 - cfg.latent_dropout)", "z = z * keep", ['tests/test_autoencoder.py']),
 ('A4 token dropout in eval', 'calm_min/autoencoder.py', "if self.training and cfg.token_dropout > 0:", "if cfg.token_dropout > 0:", ['tests/test_autoencoder.py']),
 ('A5 cross-entropy averaged over K', 'calm_min/autoencoder.py', "ce = ce.view(tokens.shape).sum(-1).mean()", "ce = ce.view(tokens.shape).mean()", ['tests/test_autoencoder.py']),
 # the baseline's BrierLM terms
 ('G1 P(y_1..n) without the product', 'calm_min/gpt.py', ".squeeze(-1).cumsum(-1).exp()", ".squeeze(-1).exp()", ['tests/test_brierlm.py']),
 ('G2 baseline samples see their token', 'calm_min/gpt.py', "step_logits = logits[:, starts - 1]", "step_logits = logits[:, starts]", ['tests/test_brierlm.py']),
 # data and training
 ('D1 targets not shifted', 'calm_min/data.py', "return w[:, :-shift], w[:, shift:]", "return w[:, :-shift], w[:, :-shift]", ['tests/test_data.py']),
 ('D2 train.py trains on (x, x)', 'train.py', "return shifted_batch(text[split], cfg.batch_size, window, s, g, device)",
  "return (lambda x: (x, x))(shifted_batch(text[split], cfg.batch_size, window, s, g, device)[0])",
  ['tests/test_train.py::test_training_targets_are_the_input_moved_on_by_one_step']),
 ('D3 chunk padding with id 0', 'calm_min/data.py', "return torch.where(valid, toks, torch.full_like(toks, self.pad_id))", "return torch.where(valid, toks, torch.full_like(toks, 0))", ['tests/test_data.py']),
 ('D4 the last start never drawn', 'calm_min/data.py', "offsets = torch.randint(len(tokens) - length + 1,", "offsets = torch.randint(len(tokens) - length,", ['tests/test_data.py']),

 # train.py (a second sweep: the entries from here on; 17 of its 31 bugs passed the fast suite at first)
 ('T1 warmup starts at 0', 'train.py', "return base_lr * (it + 1) / cfg.warmup_iters", "return base_lr * it / cfg.warmup_iters", ['tests/test_train.py::test_learning_rate_schedule']),
 ('T2 cosine inverted', 'train.py', "0.5 * (1 + math.cos(math.pi * progress))", "0.5 * (1 - math.cos(math.pi * progress))", ['tests/test_train.py::test_learning_rate_schedule']),
 ('T3 min_lr_ratio ignored', 'train.py', "return base_lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5", "return base_lr * (0 + (1 - 0) * 0.5", ['tests/test_train.py::test_learning_rate_schedule']),
 ('T4 weight decay on vectors', 'train.py', "decay = [p for p in params if p.dim() >= 2]", "decay = [p for p in params if p.dim() >= 1]", ['tests/test_train.py']),
 ('T5 no clipping', 'train.py', "cfg.grad_clip or math.inf)", "math.inf)", [TRAIN_LOOP]),
 ('T6 validation loss on train batches', 'train.py', "x, y = get_batch('val', g)", "x, y = get_batch('train', g)", [TRAIN_LOOP]),
 ('T7 BrierLM on train blocks', 'train.py', "blocks = eval_blocks(corpus.tokens('val')", "blocks = eval_blocks(corpus.tokens('train')", [TRAIN_LOOP]),
 ('T8 guard ignores an infinite gradient', 'train.py', "if not (math.isfinite(total) and math.isfinite(norm)):", "if not math.isfinite(total):", [TRAIN_LOOP]),
 ('T9 skipped step keeps its gradients', 'train.py', "                optimizer.zero_grad(set_to_none=True)\n                skipped += 1", "                skipped += 1", ['tests/test_faults.py']),
 ('T10 evaluation in training mode', 'train.py', "    def evaluate(it):\n        model.eval()", "    def evaluate(it):\n        pass", ['tests/test_faults.py']),
 # eval.py
 ('V1 cross-entropy against the input', 'eval.py', "x[:, 1:].flatten(), reduction='sum')", "x[:, :-1].flatten(), reduction='sum')", ['tests/test_eval.py']),
 ('V2 bits per byte in nats', 'eval.py', "out['bits_per_byte'] = nll / n / math.log(2) / bytes_per_token", "out['bits_per_byte'] = nll / n / bytes_per_token", ['tests/test_eval.py']),
 ('V3 last-chunk context sees the target', 'eval.py', "h_last = model.hidden(x[:, :-1].reshape(B * (L - 1), 1, K))", "h_last = model.hidden(x[:, 1:].reshape(B * (L - 1), 1, K))", ['tests/test_eval.py']),
 ('V4 a chunk exact if any token is', 'eval.py', "ok.all(-1).sum().item()", "ok.any(-1).sum().item()", ['tests/test_eval.py']),
 ('V5 KL per dimension summed', 'eval.py', "    kl_dim /= n\n", "\n", ['tests/test_eval.py']),
 ('V6 other context not rolled', 'eval.py', "('other_context', h.roll(1, 0))", "('other_context', h)", ['tests/test_eval.py']),
 # checkpoints
 ('K1 hash ignores the names', 'calm_min/checkpoint.py', 'h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())', 'h.update(f"{tuple(t.shape)}:{t.dtype}".encode())', [HASHES]),
 ('K2 written in place', 'calm_min/checkpoint.py', "tmp = path.with_name(path.name + '.tmp')", "tmp = path", ['tests/test_scripts.py::test_a_failed_checkpoint_write_leaves_the_old_file']),
 ('K3 embedded autoencoder unchecked', 'calm_min/checkpoint.py', "if kind == 'calm' and state_hash(", "if False and state_hash(", [HASHES]),
 ('K4 autoencoder hash unchecked', 'calm_min/checkpoint.py', "if state_hash(ckpt['model']) != ckpt['hash']:", "if False:", [HASHES]),
 # FLOPs
 ('F1 MLP with two products', 'calm_min/flops.py', "'mlp': bb.n_layer * 2 * 3 * d * h}", "'mlp': bb.n_layer * 2 * 2 * d * h}", ['tests/test_flops.py']),
 ('F2 attention scores halved', 'calm_min/flops.py', "'attention_scores': bb.n_layer * 4 * context * d,", "'attention_scores': bb.n_layer * 2 * context * d,", ['tests/test_flops.py']),
 ('F3 head block products', 'calm_min/flops.py', "n_blocks * (2 + 2 + 4 + 2) * d * d", "n_blocks * (2 + 2 + 2 + 2) * d * d", ['tests/test_flops.py']),
 ('F4 CALM training 2x', 'calm_min/flops.py', "trn = {k: 3 * v for k, v in calm_forward(", "trn = {k: 2 * v for k, v in calm_forward(", ['tests/test_flops.py']),
 ('F5 energy distances without diversity', 'calm_min/flops.py', "energy = 2 * n_samples * (n_targets + n_samples) * ae.latent_size", "energy = 2 * n_samples * n_targets * ae.latent_size", ['tests/test_flops.py']),
 ('F6 baseline training 2x', 'calm_min/flops.py', "'training': 3 * sum(fwd.values())}", "'training': 2 * sum(fwd.values())}", ['tests/test_flops.py']),
 ('F7 decoder head for one token', 'calm_min/flops.py', "+ K * 2 * d * ae.vocab_size)", "+ 2 * d * ae.vocab_size)", ['tests/test_flops.py']),
 # generation
 ('GD1 baseline prefill takes the last token', 'calm_min/gpt.py', "self.backbone(self.tok_emb(prompt[:, :-1]), cache=cache)", "self.backbone(self.tok_emb(prompt), cache=cache)", ['tests/test_backbone.py']),
 ('GD2 CALM prefill takes the last chunk', 'calm_min/calm.py', "self.hidden(x[:, :-1], cache)                                 # prefill, eager", "self.hidden(x, cache)", ['tests/test_calm.py']),
 ('GD3 static cache advances 2', 'calm_min/backbone.py', "    def advance(self, T: int):\n        self.pos += T", "    def advance(self, T: int):\n        self.pos += 2 * T", ['tests/test_decode.py']),
 ('AX1 auxiliary cross-entropy ignored', 'calm_min/calm.py', "loss = loss + self.cfg.aux_ce * ce", "loss = loss + 0 * ce", ['tests/test_extensions.py']),

 # flags, data, the compute-matched study (a third sweep: 10 of its 14 bugs passed the fast suite at first)
 ('P1 presets override flags', 'calm_min/config.py', "    values.update(flags)                                      # ... then flags, wherever they stand", "    values = {**flags, **values}", ['tests/test_config.py']),
 ('P2 --kl_beta dropped', 'calm_min/config.py', "kl_clip=self.kl_clip, kl_beta=self.kl_beta, mask_id=mask_id)", "kl_clip=self.kl_clip, kl_beta=0.001, mask_id=mask_id)", [FLAGS]),
 ('P3 --kl_clip dropped', 'calm_min/config.py', "kl_clip=self.kl_clip, kl_beta=self.kl_beta, mask_id=mask_id)", "kl_clip=0.5, kl_beta=self.kl_beta, mask_id=mask_id)", [FLAGS]),
 ('P4 --alpha dropped', 'calm_min/config.py', "alpha=self.alpha, aux_ce=self.aux_ce)", "alpha=1.0, aux_ce=self.aux_ce)", [FLAGS]),
 ('P5 --rope_theta dropped', 'calm_min/config.py', "ffn_hidden=self.ffn_hidden, rope_theta=self.rope_theta)", "ffn_hidden=self.ffn_hidden, rope_theta=10000.0)", [FLAGS]),
 ('P6 --token_dropout dropped', 'calm_min/config.py', "token_dropout=self.token_dropout, latent_dropout=self.latent_dropout,", "token_dropout=0.15, latent_dropout=self.latent_dropout,", [FLAGS]),
 ('P7 --max_draws dropped', 'calm_min/config.py', "num_candidates=self.num_candidates, max_draws=self.max_draws)", "num_candidates=self.num_candidates, max_draws=100_000)", [FLAGS]),
 ('P8 --noise_size dropped', 'calm_min/config.py', "noise_size=self.noise_size, n_samples=self.n_samples, n_targets=self.n_targets,", "noise_size=64, n_samples=self.n_samples, n_targets=self.n_targets,", [FLAGS]),
 ('EB0 evaluation blocks not spread', 'calm_min/data.py', "np.linspace(0, n - 1, max_blocks).round().astype(int)", "np.arange(max_blocks)", ['tests/test_data.py']),
 ('CM1 steps ignore the tokens per step', 'experiments/compute_matched.py', "steps = max(1, round(budget / (f['training'] * tokens_per_step)))", "steps = max(1, round(budget / f['training']))", ['tests/test_compute_matched.py']),
 ('CM2 frontier not a running maximum', 'experiments/compute_matched.py', "        best = max(best, score)\n", "        best = score\n", ['tests/test_compute_matched.py']),
 ('CM3 interpolation reversed', 'experiments/compute_matched.py', "t = (score - b0) / (b1 - b0)", "t = (b1 - score) / (b1 - b0)", ['tests/test_compute_matched.py']),
 ('CM4 autoencoder FLOPs per chunk as per token', 'experiments/compute_matched.py', "return ae.flops_per_token()['training'] * ae.cfg.chunk_size * chunks", "return ae.flops_per_token()['training'] * chunks", ['tests/test_compute_matched.py']),
 ('CM5 parameters include the frozen autoencoder', 'experiments/compute_matched.py', "'params': sum(p.numel() for n, p in model.named_parameters() if not n.startswith('ae.')),", "'params': sum(p.numel() for n, p in model.named_parameters()),", ['tests/test_compute_matched.py']),

 # sample.py, devices, the tokenizer, CALM's batch sampler, BrierLM's blocks, eval.py's tokenizer check
 # (a fourth sweep: 7 of its 14 bugs passed the fast suite at first)
 ('SP1 prompt without its leading end-of-text', 'sample.py', "ids = [tok.eot_id] + tok.encode(text)", "ids = tok.encode(text)", ['tests/test_scripts.py']),
 ('SP2 output decoded with the end-of-text', 'sample.py', "texts += [tok.decode(row[1:]) for row", "texts += [tok.decode(row) for row", [SAMPLES]),
 ('SP3 every batch of 64 full', 'sample.py', "idx = torch.tensor([ids] * min(64, cfg.num_samples - i)", "idx = torch.tensor([ids] * min(64, cfg.num_samples)", [SAMPLES]),
 ('DV1 --compile=auto compiles on CPU', 'calm_min/device.py', "return choice == 'true' or (choice == 'auto' and device.type == 'cuda')", "return choice == 'true' or choice == 'auto'", ['tests/test_bench.py', 'tests/test_scripts.py']),
 ('DV2 --dtype=bfloat16 not forced', 'calm_min/device.py', "return torch.bfloat16 if dtype == 'bfloat16' or (dtype == 'auto' and fast) else torch.float32", "return torch.bfloat16 if (dtype == 'auto' and fast) else torch.float32", GUARDS),
 ('DV3 --dtype=float32 ignored', 'calm_min/device.py', "return torch.bfloat16 if dtype == 'bfloat16' or (dtype == 'auto' and fast) else torch.float32", "return torch.bfloat16 if dtype == 'bfloat16' or fast else torch.float32", GUARDS),
 ('TK1 bytes decoding wraps end-of-text', 'calm_min/tokenizer.py', "return bytes(i for i in ids if i < 256).decode('utf-8', errors='replace')", "return bytes(i % 256 for i in ids).decode('utf-8', errors='replace')", ['tests/test_data.py']),
 ('TK2 tokenizer identity without its hash', 'calm_min/tokenizer.py', "'eot_id': self.eot_id, 'sha256': self.sha256}", "'eot_id': self.eot_id}", ['tests/test_data.py']),
 ('CS1 batch sampler pools mixed across positions', 'calm_min/calm.py', "pool = self.ae.decode(z).transpose(0, 1)                  # (r, N, K)", "pool = self.ae.decode(z).reshape(z.shape[1], z.shape[0], -1)", [POOLS]),
 ('CS2 batch sampler stops after the first rows', 'calm_min/calm.py', "for i in range(0, flat.shape[0], rows):", "for i in range(0, min(rows, flat.shape[0]), rows):", [POOLS]),
 ('GS1 baseline decoding step ignores T', 'calm_min/gpt.py', "return pick_token(self.lm_head(h), u, temperature, top_k)[:, None]", "return pick_token(self.lm_head(h), u, 1.0, top_k)[:, None]", ['tests/test_decode.py']),
 ('GS2 baseline decoding step ignores top-k', 'calm_min/gpt.py', "return pick_token(self.lm_head(h), u, temperature, top_k)[:, None]", "return pick_token(self.lm_head(h), u, temperature, 0)[:, None]", ['tests/test_backbone.py', 'tests/test_decode.py']),
 ('EB1 bootstrap groups by position', 'calm_min/brierlm.py', "groups.append(torch.arange(i, i + x.shape[0]).repeat_interleave(e.shape[1]))", "groups.append(torch.arange(e.shape[1]).repeat(x.shape[0]))", ['tests/test_brierlm.py']),
 ('CK1 eval.py skips the tokenizer check', 'eval.py', "        check_tokenizer(ckpt, corpus.tokenizer.identity, cfg.ckpt)\n", "\n", ['tests/test_scripts.py']),
 # the fifth sweep (session 15): train.py's bookkeeping, checkpoints, device choices, bench.py's figures,
 # the experiments, eval.py's remaining figures, sample.py's dtype, the parser
 ('TR1 --lr changeable on resume', 'train.py', "RESUMABLE = {'max_iters',", "RESUMABLE = {'lr', 'max_iters',", ['tests/test_train.py::test_resume_refuses_every_setting_that_changes_the_run']),
 ('TR2 logged loss sums the micro-steps', 'train.py', "total += loss.detach() / cfg.grad_accum", "total += loss.detach()", [ACCUM]),
 ('TR3 training FLOPs without accumulation', 'train.py', "tokens_per_step = tokens_per_micro * cfg.grad_accum * dist.world", "tokens_per_step = tokens_per_micro * dist.world", [ACCUM, LOGGED]),
 ('TR4 resumed log loses its first records', 'train.py', "(log_path.read_text().splitlines() if cfg.resume and log_path.exists() else [])", "[]", ['tests/test_train.py::test_resumed_log_has_no_duplicate_records']),
 ('TR5 --keep_checkpoints ignored', 'train.py', "if cfg.keep_checkpoints:", "if False:", ['tests/test_train.py::test_keep_checkpoints_keeps_every_evaluations_checkpoint']),
 ('TR6 tokens/s over a whole log interval', 'train.py', "n_done = (it + 1 - start) % cfg.log_interval or cfg.log_interval", "n_done = cfg.log_interval", [LOGGED]),
 ('TR7 baseline window without its target', 'train.py', "else cfg.block_size + 1", "else cfg.block_size", ['tests/test_train.py::test_a_split_of_exactly_one_window_is_enough_and_one_token_less_is_not']),
 ('TR8 autoencoder trains at --lr', 'train.py', "base_lr = cfg.ae_lr if is_ae else cfg.lr", "base_lr = cfg.lr", ['tests/test_train.py::test_each_stage_follows_its_own_learning_rate']),
 ('TR9 samples start from token 0', 'train.py', "prompt = torch.full((cfg.num_samples, 1), tok.eot_id,", "prompt = torch.full((cfg.num_samples, 1), 0,", ['tests/test_train.py::test_samples_after_training_start_from_end_of_text']),
 ('TR10 DDP ranks draw the same batches', 'train.py', "g_data = torch.Generator().manual_seed(cfg.seed + dist.rank)", "g_data = torch.Generator().manual_seed(cfg.seed)", ['-m', 'slow', 'tests/test_slow.py::test_ddp_resume_equals_uninterrupted']),
 ('CK2 checkpoint format unchecked', 'calm_min/checkpoint.py', "if ckpt.get('format') != FORMAT:", "if False:", ['tests/test_train.py::test_a_checkpoint_of_another_format_is_refused']),
 ('DV4 --compile=auto never compiles', 'calm_min/device.py', "(choice == 'auto' and device.type == 'cuda')", "False", [DEVICE]),
 ('DV5 bf16 KV cache on CPU', 'calm_min/device.py', "return torch.float32 if device.type == 'cpu' else dtype", "return dtype", [DEVICE]),
 ('DV6 CPU bf16 needs both capabilities', 'calm_min/device.py', "return any(f() for f in probe)", "return all(f() for f in probe)", [DEVICE]),
 ('BN1 generation tokens/s without the batch', 'bench.py', "res.update(generation_figures(best, B * n, K, w, read_ms, rounds))", "res.update(generation_figures(best, n, K, w, read_ms, rounds))", ['tests/test_bench.py::test_generation_and_training_report']),
 ('BN2 training ratios inverted', 'bench.py', "'ratios': {name: best[ref] / best[k] for name", "'ratios': {name: best[k] / best[ref] for name", BENCH_FIGURES),
 ('BN3 CALM over baseline inverted', 'bench.py', "res['speedup'] = best['gpt'] / best['calm']", "res['speedup'] = best['calm'] / best['gpt']", BENCH_FIGURES),
 ('BN4 speedups over the reference inverted', 'bench.py', "best['reference_nocache'] / t for name", "t / best['reference_nocache'] for name", BENCH_FIGURES),
 ('BN5 training tokens of the whole window', 'bench.py', "step.tokens = cfg.batch_size * T", "step.tokens = cfg.batch_size * window", ['tests/test_bench.py::test_training_step_trains_on_the_shifted_window']),
 ('BN6 bench trains on (x, x)', 'bench.py', "_, loss = fwd(w[:, :-s], w[:, s:], generator=gm)", "_, loss = fwd(w[:, :-s], w[:, :-s], generator=gm)", ['tests/test_bench.py::test_training_step_trains_on_the_shifted_window']),
 ('BN7 weight bound without K', 'bench.py', "res['weight_bound_speedup'] = K * w['gpt'] / w['calm']", "res['weight_bound_speedup'] = w['gpt'] / w['calm']", BENCH_FIGURES),
 ('BN8 profile per run, not per step', 'bench.py', "per_step[c] += e.self_cpu_time_total / 1e3 / n", "per_step[c] += e.self_cpu_time_total / 1e3", [PROFILED]),
 ('BN9 every op counted as a product', 'bench.py', "mm_calls += e.count if c == 'matmul' else 0", "mm_calls += e.count", [PROFILED]),
 ('BN10 FLOP ratio inverted', 'bench.py', "'calm_over_gpt_inference': c['inference'] / g['inference']", "'calm_over_gpt_inference': g['inference'] / c['inference']", ['tests/test_bench.py::test_flops_figures_are_the_models_own']),
 ('BN11 fraction of the weight bound inverted', 'bench.py', "res['compiled_fraction_of_weight_bound'] = res['speedup_compiled'] / res['weight_bound_speedup']", "res['compiled_fraction_of_weight_bound'] = res['weight_bound_speedup'] / res['speedup_compiled']", BENCH_FIGURES),
 ('BN12 memory ratio inverted', 'bench.py', "res['naive_over_ours'] = res['naive_peak_mib'] / max(res['ours_peak_mib'], 1e-9)", "res['naive_over_ours'] = res['ours_peak_mib'] / max(res['naive_peak_mib'], 1e-9)", ['tests/test_bench.py::test_generation_and_training_report']),
 ('BN13 compiled-only runs against an untimed reference', 'bench.py', "base = next(k for k in best if k.startswith('reference'))", "base = 'reference_' + next(iter(best)).split('_')[1]", BENCH_FIGURES),
 ('LC1 learning curve x in steps', 'experiments/learning_curves.py', "points = [(r['iter'] * sec_per_step, r['val_brierlm'])", "points = [(r['iter'], r['val_brierlm'])", [EXP_FIGURES]),
 ('LC2 learning curve without accumulation', 'experiments/learning_curves.py', "return tc['batch_size'] * tc['grad_accum'] * (", "return tc['batch_size'] * (", [EXP_FIGURES]),
 ('LC3 learning curve at the slowest decile', 'experiments/learning_curves.py', "n=10)[-1]", "n=10)[0]", [EXP_FIGURES]),
 ('BC1 Spearman as Pearson', 'experiments/brier_vs_ce.py', "'spearman': pearson(ranks(ce), ranks(lm))", "'spearman': pearson(ce, lm)", [EXP_FIGURES]),
 ('BC2 ranks as argsort', 'experiments/brier_vs_ce.py', "torch.tensor(v).argsort().argsort().tolist()", "torch.tensor(v).argsort().tolist()", [EXP_FIGURES]),
 ('BC3 Pearson not centred', 'experiments/brier_vs_ce.py', "x, y = x - x.mean(), y - y.mean()", "pass", [EXP_FIGURES]),
 ('TO1 tradeoff across tokenizers', 'experiments/tradeoff.py', "if ck['tokenizer'] != gk['tokenizer']:", "if False:", ['tests/test_tradeoff.py::test_checkpoints_of_two_tokenizers_are_refused']),
 ('DG1 diagnosis pairs a state with its own chunk', 'experiments/diagnose_calm.py', "nxt.append(x[:, 1:].flatten(0, 1))", "nxt.append(x[:, :-1].flatten(0, 1))", [DIAG_PAIRS]),
 ('DG2 diagnosis states one chunk on', 'experiments/diagnose_calm.py', "hs.append(model.hidden(x)[:, :-1].flatten(0, 1).float())", "hs.append(model.hidden(x)[:, 1:].flatten(0, 1).float())", [DIAG_PAIRS]),
 ('DG3 other context is the own one', 'experiments/diagnose_calm.py', ".roll(1, 0).flatten(0, 1)", ".roll(0, 0).flatten(0, 1)", [DIAG_REPORT]),
 ('DG4 unigram from validation', 'experiments/diagnose_calm.py', "unigram = torch.bincount(nxt_tr[:, 0].cpu()", "unigram = torch.bincount(nxt_val[:, 0].cpu()", [DIAG_REPORT]),
 ('DG5 probe fitted on validation', 'experiments/diagnose_calm.py', "probe = train_probe(h_tr.cpu(), nxt_tr[:, 0].cpu()", "probe = train_probe(h_val.cpu(), nxt_val[:, 0].cpu()", [DIAG_REPORT]),
 ('DG6 one posterior draw used twice', 'experiments/diagnose_calm.py', "    y2 = model.ae.sample_latent(mu.float(), log_sigma.float(), generator=g)", "    y2 = y1", [DIAG_REPORT]),
 ('DG7 first-token groups keyed by the second', 'experiments/diagnose_calm.py', "'same_first_token': group_spread(y1, y2, nxt_val[:, 0].cpu()", "'same_first_token': group_spread(y1, y2, nxt_val[:, 1].cpu()", [DIAG_REPORT]),
 ('EV1 collapsed dimensions inverted', 'eval.py', "'collapsed_dims': int((kl_dim < 0.01).sum())", "'collapsed_dims': int((kl_dim > 0.01).sum())", [AE_FIGURES]),
 ('EV2 noise level ignored', 'eval.py', "zs[f'noise_{s}'] = mu + s * torch.randn(", "zs[f'noise_{s}'] = mu + torch.randn(", [AE_FIGURES]),
 ('EV3 sampled z is mu', 'eval.py', "zs = {'mu': mu, 'sampled': ae.sample_latent(mu, log_sigma, generator=g)}", "zs = {'mu': mu, 'sampled': mu}", [AE_FIGURES]),
 ('EV4 autoencoder chunks from the split start', 'eval.py', "ids = torch.linspace(0, idx.total - 1, n).round().long()", "ids = torch.arange(n)", ['tests/test_scripts.py::test_autoencoder_chunks_span_the_split']),
 ('EV5 a context with nothing to score', 'eval.py', "need = (1 + -(-4 // K)) * K ", "need = K ", ['tests/test_scripts.py::test_eval_refuses_a_context_with_nothing_to_score']),
 ('EV6 other context counts a lone block', 'eval.py', "n_other += B * (L - 1) if B >= 2 else 0", "n_other += B * (L - 1)", ['tests/test_eval.py::test_other_context_averages_over_the_batches_that_have_one']),
 ('SP4 sample.py --dtype ignored', 'sample.py', "model.to(resolve_dtype(device, cfg.dtype))", "model.to(torch.float32)", ['tests/test_scripts.py::test_sample_bfloat16']),
 ('CF1 dashes in flag names refused', 'calm_min/config.py', "key = key.replace('-', '_')", "pass", ['tests/test_config.py::test_defaults_and_overrides']),
 # the sixth sweep (session 15): the autoencoder, backbone, data preparation, tokenizer, baseline's
 # BrierLM terms, energy head, compute-matched study
 ('AE7 token dropout in the targets', 'calm_min/autoencoder.py', "            inp = tokens.masked_fill(drop, cfg.mask_id)", "            inp = tokens = tokens.masked_fill(drop, cfg.mask_id)", [AE_TRAIN]),
 ('AE8 accuracy against the dropped-out input', 'calm_min/autoencoder.py', "acc = (logits.argmax(-1) == tokens).float().mean()", "acc = (logits.argmax(-1) == inp).float().mean()", [AE_TRAIN]),
 ('AE9 token id V accepted', 'calm_min/autoencoder.py', "int(tokens.max()) >= V", "int(tokens.max()) > V", [AE_TRAIN]),
 ('BB1 RMSNorm fallback sums', 'calm_min/backbone.py', "xf.pow(2).mean(-1, keepdim=True)", "xf.pow(2).sum(-1, keepdim=True)", ['tests/test_backbone.py::test_rms_norm_matches_its_definition']),
 ('DA1 prepared data keyed without the modification time', 'calm_min/data.py', "srcs.append([str(p.resolve()), st.st_size, st.st_mtime_ns])", "srcs.append([str(p.resolve()), st.st_size])", ['tests/test_data.py::test_an_edited_corpus_of_the_same_size_is_prepared_again']),
 ('DA2 bytes per token inverted', 'calm_min/data.py', "return s['bytes'] / s['tokens']", "return s['tokens'] / s['bytes']", [UTF8]),
 ('DA3 split bytes counted as characters', 'calm_min/data.py', "                n_bytes += len(text.encode('utf-8'))\n                if len(batch)", "                n_bytes += len(text)\n                if len(batch)", [UTF8]),
 ('DA4 --data bytes counted as characters', 'calm_min/data.py', "        n_bytes += len(text.encode('utf-8'))\n    if not ids:", "        n_bytes += len(text)\n    if not ids:", [UTF8]),
 ('DA5 tokenizer file unchecked against meta.json', 'calm_min/data.py', "if self.tokenizer.identity != self.meta['tokenizer']:", "if False:", ['tests/test_data.py::test_a_replaced_tokenizer_file_is_refused']),
 ('GP3 baseline sum of squares tempered', 'calm_min/gpt.py', "probs = F.softmax(step_logits.float(), -1)", "probs = F.softmax(step_logits.float() / sampler.temperature, -1)", ['tests/test_brierlm.py::test_baseline_sum_of_squares_is_the_untempered_distributions']),
 ('CM6 CALM runs without the autoencoder stage', 'experiments/compute_matched.py', "r['train_flops'] = ck['train_flops'] + (ae_flops if r['model'] == 'calm' else 0.0)", "r['train_flops'] = ck['train_flops']", ['tests/test_compute_matched.py::test_main_charges_every_calm_run_the_autoencoder_stage']),
 ('CM7 heads not from the width', 'experiments/compute_matched.py', "n_head=max(1, n_embd // 64))", "n_head=tcfg.n_head)", ['tests/test_compute_matched.py::test_plan_names_a_recurring_size_by_budget']),
 # the seventh sweep: samplers, BrierLM, CALM's and the baseline's generation, flag checks
 ('C10 exact sampler without its budget', 'calm_min/calm.py', 'rows.append(exact_temperature_sample(draw, T, generator, sampler.max_draws)[0])', 'rows.append(exact_temperature_sample(draw, T, generator, None)[0])', ['tests/test_calm.py::test_exact_sampler_keeps_its_draw_budget']),
 ('C18 K<4 BrierLM target one chunk early', 'calm_min/calm.py', 'target = blocks[:, starts[:, None] * K + torch.arange(NGRAM', 'target = blocks[:, (starts[:, None] - 1) * K + torch.arange(NGRAM', ['tests/test_brierlm.py::test_targets_are_the_four_tokens_after_the_context']),
 ('SA1 exact: only first tokens compared', 'calm_min/sampling.py', 'if not bool((xs == xs[0]).all()):', 'if not bool((xs[:, 0] == xs[0, 0]).all()):', ['tests/test_sampling.py::test_exact_sampler_compares_whole_outcomes']),
 ('SA2 budget off by the last draws', 'calm_min/sampling.py', 'if max_draws is not None and used + m > max_draws:', 'if max_draws is not None and used > max_draws:', ['tests/test_sampling.py::test_exact_sampler_never_draws_past_its_budget']),
 ('SA5 factory coin on the first token', 'calm_min/sampling.py', 'bernoulli_power(lambda: bool((take(1)[0] == x).all()), a, generator)', 'bernoulli_power(lambda: bool(take(1)[0][0] == x[0]), a, generator)', ['tests/test_sampling.py::test_exact_sampler_compares_whole_outcomes']),
 ('SA9 top_k above V', 'calm_min/sampling.py', 'kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1)', 'kth = torch.topk(logits, top_k, dim=-1)', ['tests/test_sampling.py::test_top_k_above_the_vocabulary_keeps_every_token']),
 ('GP5 two-token prompt not prefilled', 'calm_min/gpt.py', 'if prompt.shape[1] > 1:', 'if prompt.shape[1] > 2:', ['tests/test_decode.py::test_cached_generation_equals_reference_for_every_prompt_length']),
 ('GP9 baseline BrierLM ignores T', 'calm_min/gpt.py', 'sample_logits(step_logits.flatten(0, 1), sampler.temperature, generator=generator)', 'sample_logits(step_logits.flatten(0, 1), 1.0, generator=generator)', ['tests/test_brierlm.py::test_baseline_samples_are_drawn_at_the_samplers_temperature']),
 ('BR1 SE divided by sqrt(blocks)', 'calm_min/brierlm.py', "'brierlm_se': float(boot_lm.std())", "'brierlm_se': float(boot_lm.std()) / G ** 0.5", ['tests/test_brierlm.py::test_summarize_standard_errors']),
 ('BR2 hit_b from sample a', 'calm_min/brierlm.py', 'hit_b = (sample_b == target)', 'hit_b = (sample_a == target)', ['tests/test_brierlm.py::test_two_sample_estimate_by_hand']),
 ('BR4 exact flag ignored', 'calm_min/brierlm.py', 'e = estimate(model.continuations(x, generator=g, **kw), exact)', 'e = estimate(model.continuations(x, generator=g, **kw), True)', ['tests/test_brierlm.py::test_evaluate_brier_passes_its_sampler_and_estimator_on']),
 ('BR6 sampler dropped', 'calm_min/brierlm.py', "kw = {} if sampler is None else {'sampler': sampler}", 'kw = {}', ['tests/test_brierlm.py::test_evaluate_brier_passes_its_sampler_and_estimator_on']),
 ('CF4 odd head size accepted', 'calm_min/config.py', 'if self.n_embd % self.n_head or (self.n_embd // self.n_head) % 2:', 'if self.n_embd % self.n_head:', ['tests/test_config.py::test_each_check_refuses_its_value']),
 ('CF6 BPE vocab < 260 accepted', 'calm_min/config.py', "if self.tokenizer == 'bpe' and self.vocab_size < 260:", 'if False:', ['tests/test_config.py::test_each_check_refuses_its_value']),
 ('CF7 resume with overwrite accepted', 'calm_min/config.py', 'if self.resume and self.overwrite:', 'if False:', ['tests/test_config.py::test_each_check_refuses_its_value']),
 ('CF9 negative grad_clip accepted', 'calm_min/config.py', "for n in ('weight_decay', 'grad_clip', 'min_lr_ratio',", "for n in ('weight_decay', 'min_lr_ratio',", ['tests/test_config.py::test_each_check_refuses_its_value']),
 ('CF11 eval bootstrap 1 accepted', 'calm_min/config.py', 'if self.bootstrap < 2:', 'if False:', ['tests/test_config.py::test_eval_and_sample_flags_are_checked_at_the_start']),
 ('CF12 eval max_blocks < 0 accepted', 'calm_min/config.py', 'if self.max_blocks < 0:', 'if False:', ['tests/test_config.py::test_eval_and_sample_flags_are_checked_at_the_start']),
 # written with their code (session 17): bench.py's training ratios round by round
 ('BN14 ratios by round inverted', 'bench.py', "r = [a / b for a, b in zip(ref, variant, strict=True)]", "r = [b / a for a, b in zip(ref, variant, strict=True)]", ['tests/test_bench.py::test_training_ratios_by_round_by_hand', 'tests/test_bench.py::test_generation_ratios_by_round_by_hand']),
 ('BN15 rounds left out of the training report', 'bench.py', "res = training_figures(best, {k: step.tokens for k, step in steps.items()}, rounds)", "res = training_figures(best, {k: step.tokens for k, step in steps.items()})", ['tests/test_bench.py::test_generation_and_training_report']),
 # written with their code (session 17): the sample-target distances through matrix products
 ('E6 distances under autocast', 'calm_min/energy_head.py', "        with torch.autocast(x.device.type, enabled=False):\n            sq =", "        if True:\n            sq =", ['tests/test_energy.py']),
 ('E7 distance gradient without the x term', 'calm_min/energy_head.py', "dx = x * w.sum(-1, keepdim=True) - torch.bmm(w, y)", "dx = -torch.bmm(w, y)", ['tests/test_energy.py']),
 ('E8 target gradient summed over the wrong axis', 'calm_min/energy_head.py', "dy = y * w.sum(-2).unsqueeze(-1)", "dy = y * w.sum(-1).mean(-1, keepdim=True).unsqueeze(-1)", ['tests/test_energy.py']),
 ('E9 no zero-distance guard', 'calm_min/energy_head.py', "w = torch.where(d > 0, grad / d, 0.0)", "w = grad / d", ['tests/test_energy.py']),
 ('E10 both terms through the expansion', 'calm_min/energy_head.py', "diversity = _pow_dist(torch.cdist(x, x, compute_mode=exact), alpha)", "diversity = _pow_dist(_Distances.apply(x, x), alpha)", ['tests/test_energy.py', 'tests/test_calm.py']),
 # written with their code (session 17): float32 attention for CPU autocast training
 ('AT1 float32 attention in evaluation too', 'calm_min/backbone.py', "return q.device.type == 'cpu' and torch.is_grad_enabled() and torch.is_autocast_enabled('cpu')", "return q.device.type == 'cpu' and torch.is_autocast_enabled('cpu')", ['tests/test_backbone.py']),
 ('AT2 bf16 attention in training', 'calm_min/backbone.py', "return q.device.type == 'cpu' and torch.is_grad_enabled() and torch.is_autocast_enabled('cpu')", "return False", ['tests/test_backbone.py']),
 # written with their code (session 18): bench.py's ablation of the Llama-style layers
 ('BN16 over-the-baseline ratios inverted', 'bench.py', "pairs[f'{k}_over_{also_over}'] = (k, also_over)", "pairs[f'{k}_over_{also_over}'] = (also_over, k)", ['tests/test_bench.py::test_training_figures_also_over_the_baseline_by_hand']),
 ('BN17 rope_off leaves RoPE off', 'bench.py', "        backbone_module.rope = saved\n", "        pass\n", ['tests/test_bench.py::test_learned_positions_carry_the_order_without_rope']),
 ('BN18 learned positions with RoPE still on', 'bench.py', "        m.backbone.forward = rope_off()(m.backbone.forward)\n", "", ['tests/test_bench.py::test_learned_positions_carry_the_order_without_rope']),
 ('BN19 the GELU MLP not swapped in', 'bench.py', "        if 'mlp' in swaps:\n", "        if False:\n", ['tests/test_bench.py::test_ablated_baselines_swap_what_they_say']),
 ('BN20 ablation without the norm swap', 'bench.py', "            blk.attn_norm, blk.mlp.norm = nn.LayerNorm(d), nn.LayerNorm(d)", "            blk.attn_norm = nn.LayerNorm(d)", ['tests/test_bench.py::test_ablated_baselines_swap_what_they_say']),
 # written with their code (session 20): bench.py's generation ratios round by round
 ('BN21 rounds left out of the generation report', 'bench.py', "res.update(generation_figures(best, B * n, K, w, read_ms, rounds))", "res.update(generation_figures(best, B * n, K, w, read_ms))", ['tests/test_bench.py::test_generation_and_training_report']),
 ('BN22 CALM over the baseline by round inverted', 'bench.py', "pairs['speedup'] = ('calm', 'gpt')", "pairs['speedup'] = ('gpt', 'calm')", ['tests/test_bench.py::test_generation_ratios_by_round_by_hand']),
 ('BN23 --gen_ref_dtype ignored', 'bench.py', "ref_dtype = resolve_dtype(device, bench.gen_ref_dtype) if bench.gen_ref_dtype else dtype", "ref_dtype = dtype", ['tests/test_bench.py::test_generation_reference_dtype']),
 ('BN24 the reference left in float32 under --dtype', 'bench.py', "    if ref_dtype != torch.float32:\n        ref = copy.deepcopy(ref).to(ref_dtype)\n", "", ['tests/test_bench.py::test_generation_reference_dtype']),
]

if __name__ == '__main__':
    only = set(sys.argv[1:])
    missed = 0
    for name, path, a, b, tests in M:
        if only and name.split()[0] not in only:
            continue
        src = open(path).read()
        assert a in src, (name, a)           # every occurrence is replaced
        open(path, 'w').write(src.replace(a, b))
        try:
            r = subprocess.run([sys.executable, '-m', 'pytest', '-q', '-x', '-p', 'no:cacheprovider', *tests,
                                '--deselect', STALE_GUARD], capture_output=True, text=True)
            last = [l for l in r.stdout.splitlines() if 'FAILED' in l][:1]
            print(f"{name}: {'CAUGHT' if r.returncode else 'MISSED'} {last}", flush=True)
            missed += r.returncode == 0
        finally:
            open(path, 'w').write(src)
    sys.exit(1 if missed else 0)
