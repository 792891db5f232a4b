# The CPU demo that learns (README, "Making CALM learn at small scale"): `python train.py
# config/tiny_bytes.py` trains the autoencoder (stage 1, 61 s on 2 cores with hardware bf16), then
# CALM (stage 2, 813 s), then prints samples. Byte-level tokens, so that a chunk of K = 4 holds a few
# nats of uncertainty rather than the ~13 of four BPE tokens; one extension beyond the paper, the
# auxiliary next-chunk cross-entropy (aux_ce, training only: generation stays likelihood-free). For
# the paper's method exactly, add --aux_ce=0. The baseline at the same size and about the same
# training time as CALM's stage 2: --model=gpt --max_iters=2800 --out_dir=out/tiny_bytes_gpt.
model = 'calm'
out_dir = 'out/tiny_bytes'
tokenizer = 'bytes'
block_size = 256           # 64 chunk positions for CALM, 256 positions for the baseline
dtype = 'auto'             # bf16 autocast on CUDA and on CPUs with hardware bf16 (2.2x faster here), else float32
# backbone (CALM and the baseline)
n_layer = 4
n_head = 4
n_embd = 256
# autoencoder (stage 1): K = 4 bytes into l = 32
chunk_size = 4
latent_size = 32
ae_dim = 256
ae_hidden = 512
ae_max_iters = 1500
ae_batch_size = 512
ae_lr = 3e-3
# energy head (stage 2)
head_blocks = 4
noise_size = 64
n_samples = 8
n_targets = 100
# extension (README): auxiliary next-chunk token cross-entropy on the backbone's hidden state
aux_ce = 1.0
# optimisation
batch_size = 16
max_iters = 3200
lr = 1e-3
warmup_iters = 50
eval_interval = 800
eval_iters = 10
log_interval = 50
brier_blocks = 8
num_samples = 2
sample_tokens = 128
