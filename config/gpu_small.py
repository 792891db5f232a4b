# A sensible single-GPU run (an H100/H200 class card, bf16, torch.compile): the paper's autoencoder
# (d_ae = 512, l = 128, K = 4) and a ~50M-parameter backbone, on the bundled corpus with BPE 4096.
# Scale max_iters and the backbone up with a larger corpus (--dataset=your.jsonl).
model = 'calm'
out_dir = 'out/gpu_small'
vocab_size = 4096
block_size = 1024          # CALM: 256 chunk positions
n_layer = 12
n_head = 12
n_embd = 768
# autoencoder: the paper's settings
chunk_size = 4
latent_size = 128
ae_dim = 512
ae_hidden = 1280
ae_max_iters = 10000
ae_batch_size = 8192
ae_lr = 1e-3
# energy head: a quarter of the backbone's layers in blocks, N = 8, M = 100
head_blocks = 3
n_samples = 8
n_targets = 100
# optimisation
batch_size = 32
grad_accum = 1
max_iters = 10000
lr = 3e-4
lr_schedule = 'constant'
warmup_iters = 500
eval_interval = 500
eval_iters = 50
log_interval = 50
brier_blocks = 64
