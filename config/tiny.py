# The CPU demo (2 cores): `python train.py config/tiny.py` trains the autoencoder (stage 1), then
# CALM (stage 2), then prints samples; `--model=gpt` trains the discrete baseline with the same
# backbone on the same data. BPE vocabulary 1024 rather than 4096: at this budget (about one pass
# over the 3.4M training tokens) every token of a 1024 vocabulary is seen often enough for the
# autoencoder to pass 99.9% reconstruction; see docs/results.md, *Stage 1*.
model = 'calm'
out_dir = 'out/tiny'
vocab_size = 1024
block_size = 256           # tokens of context: 64 chunk positions for CALM, 256 positions for the baseline
# backbone (CALM and the baseline)
n_layer = 4
n_head = 4
n_embd = 256
# autoencoder (stage 1): the paper's K = 4 and l = 128, a narrower d_ae (256 rather than 512)
chunk_size = 4
latent_size = 128
ae_dim = 256
ae_hidden = 512
ae_max_iters = 1500
ae_batch_size = 512
ae_lr = 3e-3
# energy head (stage 2)
head_blocks = 2
noise_size = 64
n_samples = 8
n_targets = 100
# optimisation
batch_size = 16
max_iters = 1000
lr = 1e-3
warmup_iters = 50
eval_interval = 500
eval_iters = 10
log_interval = 50
brier_blocks = 8
num_samples = 2
sample_tokens = 64
dtype = 'float32'          # the recorded figures were made in float32 ('auto' picks bf16 on CPUs with hardware bf16)
