"""calm_min/flops.py against torch's FlopCounterMode on small models: the analytic counts of matrix
products must agree exactly (2 FLOPs per multiply-add). FlopCounterMode counts nothing for CPU's
scaled_dot_product_attention kernel (torch 2.13), so the attention scores (4 T d per token and layer)
are checked by formula only."""
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from calm_min import flops
from calm_min.autoencoder import AEConfig, Autoencoder
from calm_min.backbone import BackboneConfig
from calm_min.calm import CALM, CALMConfig
from calm_min.gpt import GPT, GPTConfig

BB = BackboneConfig(n_layer=2, n_head=2, n_embd=64)


def counted(fn) -> int:
    with FlopCounterMode(display=False) as fc:
        fn()
    return fc.get_total_flops()


@pytest.mark.parametrize('T', [8, 32])
def test_gpt_forward(T):
    model = GPT(GPTConfig(vocab_size=50, backbone=BB))
    x = torch.randint(50, (1, T))
    with torch.no_grad():
        f = flops.gpt_forward(BB, 50, T)
        assert counted(lambda: model(x)) == T * (sum(f.values()) - f['attention_scores'])
    assert f['attention_scores'] == BB.n_layer * 4 * T * BB.n_embd


@pytest.mark.parametrize('K,L,N', [(4, 6, 8), (2, 9, 3)])
def test_calm_parts(K, L, N):
    aec = AEConfig(vocab_size=40, chunk_size=K, latent_size=8, dim=32, hidden=64)
    model = CALM(CALMConfig(backbone=BB, head_blocks=2, noise_size=16, n_samples=N), Autoencoder(aec)).eval()
    x = torch.randint(40, (1, L, K))
    with torch.no_grad():
        h = model.hidden(x)
        parts = flops.calm_forward(BB, aec, L, head_blocks=2, noise_size=16, n_samples=N)
        assert counted(lambda: model.hidden(x)) == L * (parts['compress'] + parts['attention_proj'] + parts['mlp'])
        assert counted(lambda: model.head(h, N)) == L * parts['energy_head']
        assert counted(lambda: model.ae.decode(torch.randn(1, 8))) == flops.ae_decoder(aec)
        assert counted(lambda: model.ae.encode(x[0, :1])) == flops.ae_encoder(aec)


@pytest.mark.parametrize('K,L,N,M', [(4, 6, 8, 10), (2, 9, 3, 5)])
def test_calm_training_step(K, L, N, M):
    """A whole training step, forward and backward, as FlopCounterMode counts it: the analytic
    'training' figure (3x the trained parts' forward, 1x the frozen encoder that makes the targets)
    less the attention scores (not counted on CPU, above) and less one product the 3x convention counts
    but backward never forms: the input gradient of the head's first layer, whose input (the noise)
    needs none (2 noise_size d per sample; 0.5% of the step here). The energy loss's distances are
    apart: N M + N N pairs of l-vectors, l multiply-adds each; the counter sees the N M sample-target
    ones, which are matrix products, forward and in the samples' gradient (4 N M l per position)."""
    aec = AEConfig(vocab_size=40, chunk_size=K, latent_size=8, dim=32, hidden=64)
    model = CALM(CALMConfig(backbone=BB, head_blocks=2, noise_size=16, n_samples=N, n_targets=M),
                 Autoencoder(aec)).train()
    x = torch.randint(40, (1, (L + 1) * K))

    def step():
        model(x[:, :-K], x[:, K:])[1].backward()
    f = model.flops_per_token(L * K)
    not_formed = N * 2 * 16 * BB.n_embd                                      # per position
    distances = 4 * N * M * aec.latent_size                                   # per position
    assert counted(step) == (L * K * (f['training'] - f['training_parts']['attention_scores'])
                             - L * not_formed + L * distances)
    assert f['energy_loss'] * K == 2 * (N * M + N * N) * aec.latent_size


def test_per_token_figures_add_up():
    aec = AEConfig(vocab_size=1024, chunk_size=4, latent_size=128, dim=256, hidden=512)
    bb = BackboneConfig(n_layer=4, n_head=4, n_embd=256)
    c = flops.calm_per_token(bb, aec, context=64, head_blocks=2)
    g = flops.gpt_per_token(bb, 1024, context=256)
    assert c['inference'] == pytest.approx(sum(c['inference_parts'].values()))
    assert c['training'] == pytest.approx(sum(c['training_parts'].values()))
    assert g['training'] == 3 * g['inference'] > 0


def test_autoencoder_training_flops():
    """The autoencoder stage's forward in training mode (token and latent dropout on) runs the encoder
    and decoder once per chunk: FlopCounterMode agrees with `ae_per_token`, and training is 3x that."""
    aec = AEConfig(vocab_size=40, chunk_size=4, latent_size=8, dim=32, hidden=64)
    ae = Autoencoder(aec).train()
    x = torch.randint(39, (6, 4))                                 # 6 chunks of K = 4 tokens
    f = ae.flops_per_token()
    assert counted(lambda: ae(x)) == 6 * 4 * f['inference']
    assert f['training'] == 3 * f['inference'] == pytest.approx(3 * sum(f['inference_parts'].values()))
