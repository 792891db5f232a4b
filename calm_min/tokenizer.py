"""Tokenizers: a byte-level BPE trained with the HF `tokenizers` package, a dependency-free byte
tokenizer, or any existing `tokenizer.json` a user points to.

Every tokenizer has an end-of-text id (`eot_id`) that closes each document; the autoencoder also
uses it to pad documents to whole chunks, and as the fixed id of token dropout. `identity` is what
checkpoints record so that a model is never run with a tokenizer it was not trained with.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterable

EOT = '<|endoftext|>'
_EOT_NAMES = (EOT, '</s>', '<eos>', '[SEP]', '<|end_of_text|>', '<|eot_id|>')


class Tokenizer:
    """encode(str) -> list[int]; decode(list[int]) -> str; `vocab_size`, `eot_id`, `identity`."""

    def __init__(self, kind: str, hf=None):
        self.kind = kind
        self.hf = hf
        if kind == 'bytes':
            self.vocab_size, self.eot_id = 257, 256   # 256 byte values + end-of-text
            self.sha256 = hashlib.sha256(b'calm-min bytes tokenizer v1').hexdigest()
        else:
            self.vocab_size = hf.get_vocab_size(with_added_tokens=True)
            ids = [hf.token_to_id(n) for n in _EOT_NAMES]
            ids = [i for i in ids if i is not None]
            if not ids:
                raise ValueError(f"the tokenizer has no end-of-text token (looked for {', '.join(_EOT_NAMES)}); "
                                 f"add one, e.g. tokenizer.add_special_tokens(['{EOT}'])")
            self.eot_id = ids[0]
            self.sha256 = hashlib.sha256(hf.to_str().encode()).hexdigest()

    @property
    def identity(self) -> dict:
        return {'kind': self.kind, 'vocab_size': self.vocab_size, 'eot_id': self.eot_id, 'sha256': self.sha256}

    def encode(self, text: str) -> list[int]:
        if self.kind == 'bytes':
            return list(text.encode('utf-8'))
        return self.hf.encode(text).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        if self.kind == 'bytes':
            return [list(t.encode('utf-8')) for t in texts]
        return [e.ids for e in self.hf.encode_batch(texts)]

    def decode(self, ids) -> str:
        ids = [int(i) for i in ids]
        if self.kind == 'bytes':
            return bytes(i for i in ids if i < 256).decode('utf-8', errors='replace')
        return self.hf.decode(ids, skip_special_tokens=False)

    def to_str(self) -> str:
        """What `from_str` needs to rebuild exactly this tokenizer (stored in checkpoints)."""
        return json.dumps({'calm_min_bytes_tokenizer': 1}) if self.kind == 'bytes' else self.hf.to_str()

    @staticmethod
    def from_str(text: str, kind: str = 'file') -> 'Tokenizer':
        if '"calm_min_bytes_tokenizer"' in text[:64]:
            return Tokenizer('bytes')
        from tokenizers import Tokenizer as HFTokenizer
        try:
            hf = HFTokenizer.from_str(text)
        except Exception as e:
            raise ValueError(f"not a valid tokenizer.json ({str(e)[:200]})") from None
        return Tokenizer(kind, hf)

    def save(self, path: Path):
        Path(path).write_text(self.to_str())

    @staticmethod
    def load(path: Path, kind: str = 'file') -> 'Tokenizer':
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer file {path} not found")
        try:
            return Tokenizer.from_str(path.read_text(), kind)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None

    @staticmethod
    def from_config(name: str) -> 'Tokenizer':
        """'bytes', or a path to an existing tokenizer.json. ('bpe' is trained: `train_bpe`.)"""
        if name == 'bytes':
            return Tokenizer('bytes')
        if not Path(name).is_file():
            raise FileNotFoundError(f"tokenizer file {name} not found")
        return Tokenizer.from_str(Path(name).read_text(), 'file')   # errors say what is wrong; callers name the file


def train_bpe(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """A byte-level BPE trained deterministically on `texts`; id 0 is the end-of-text token."""
    from tokenizers import Tokenizer as HFTokenizer, decoders, models, pre_tokenizers, trainers
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    hf.train_from_iterator(texts, trainer=trainer)
    return Tokenizer('bpe', hf)
