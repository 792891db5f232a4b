"""Sample text from a CALM or baseline checkpoint.

    python sample.py --ckpt=out/tiny/calm.pt --prompt="Fellow citizens" --temperature=0.5
    python sample.py --ckpt=out/tiny/gpt.pt --temperature=0.8 --top_k=50
    python sample.py --ckpt=out/tiny/calm.pt --prompt=FILE:prompt.txt --sampler=exact --temperature=0.7
    python sample.py --ckpt=out/tiny/calm.pt --compile=true --dtype=bfloat16   # fastest batch-1 decoding on a CPU

CALM at temperature T < 1 uses the likelihood-free samplers of calm_min/sampling.py: 'batch'
(Algorithm 2, T = 1/n, a pool of --num_candidates head samples per step) or 'exact' (Algorithm 1,
any T in (0, 1], at most --max_draws draws per chunk). The baseline uses softmax temperature and top-k.
Every sample starts a new document: the prompt follows an end-of-text token.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from calm_min.checkpoint import CheckpointError, load_model
from calm_min.config import ConfigError, SampleConfig, run_cli
from calm_min.device import pick_device, resolve_dtype, use_compile
from calm_min.sampling import SamplingBudgetExceeded
from calm_min.tokenizer import Tokenizer


def main(cfg: SampleConfig) -> list[str]:
    device = pick_device(cfg.device)
    sampler = cfg.make_sampler()
    text = cfg.prompt
    if text.startswith('FILE:'):
        path = Path(text[5:]).expanduser()
        if not path.is_file():
            raise ConfigError(f"--prompt=FILE:{path}: no such file")
        try:
            text = path.read_text(encoding='utf-8')
        except UnicodeDecodeError as e:
            raise ConfigError(f"--prompt=FILE:{path} is not UTF-8 text (invalid byte at offset {e.start}): "
                              f"convert it to UTF-8") from None
    model, ckpt = load_model(cfg.ckpt, ('gpt', 'calm'), device)
    model.to(resolve_dtype(device, cfg.dtype))               # bf16: weights cast; the KV cache stays float32 on CPU
    tok = Tokenizer.from_str(ckpt['tokenizer_json'], ckpt['tokenizer']['kind'])
    ids = [tok.eot_id] + tok.encode(text)
    trained = ckpt['train_config']['block_size']
    if len(ids) + cfg.max_new_tokens > trained:
        print(f"warning: the prompt ({len(ids)} tokens) and --max_new_tokens={cfg.max_new_tokens} exceed the "
              f"{trained}-token context this model was trained on: expect text of lower quality", file=sys.stderr)
    g = torch.Generator(device=device).manual_seed(cfg.seed)
    t0 = time.time()
    texts = []
    for i in range(0, cfg.num_samples, 64):                  # at most 64 sequences at once: bounded memory
        idx = torch.tensor([ids] * min(64, cfg.num_samples - i), dtype=torch.long, device=device)
        texts += [tok.decode(row[1:]) for row in model.generate(idx, cfg.max_new_tokens, sampler, generator=g,
                                                                    compile=use_compile(cfg.compile, device)).tolist()]
    dt = time.time() - t0
    for i, t in enumerate(texts):
        print(f"--- sample {i + 1} ---\n{t}")
    print(f"--- {cfg.num_samples * cfg.max_new_tokens / dt:.1f} tokens/s ({model.kind}, {sampler}, {device})")
    return texts


def cli(argv: list[str]) -> int:
    return run_cli(main, SampleConfig, argv, (ConfigError, CheckpointError, SamplingBudgetExceeded, OSError, ValueError))


if __name__ == '__main__':
    sys.exit(cli(sys.argv[1:]))
