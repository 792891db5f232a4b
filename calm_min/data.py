"""Data: the bundled corpora, a user's own corpus, tokenizing once into memmapped .bin files, and
the batch samplers of both stages.

Corpora. `sotu` (bundled, data/sotu.jsonl.xz): 233 State of the Union addresses; every 20th speech
(index % 20 == 10 in file-name order) is the validation split, the rest train; the test split is
Moby Dick (data/moby_dick.txt.xz), out of domain. A user's corpus is a .txt file, a folder of .txt
files (one document each) or a .jsonl with a `text` field (one document a line), read streaming;
a single .txt file is cut at line boundaries into ~64 KB documents (one under 704 KB into 20 equal
pieces, so that it still has a validation split). Every 20th document goes to val.

Preparation writes, per split, `{split}.bin` (uint16, or uint32 for vocabularies over 65535: each
document's tokens followed by end-of-text) and `{split}.idx` (int64 start offset of each document),
plus `tokenizer.json` and `meta.json`. It is skipped when meta.json matches the sources and settings.
Run it alone with `python -m calm_min.data --dataset=... --tokenizer=...`.
"""
from __future__ import annotations

import codecs
import contextlib
import hashlib
import itertools
import json
import lzma
import os
import sys
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from .tokenizer import Tokenizer, train_bpe

BUNDLED = Path(__file__).resolve().parent.parent / 'data'
FORMAT = 1
PIECE_BYTES = 64 * 1024    # a single .txt file's documents: about this many characters each
VAL_EVERY = 20             # every 20th document (the 10th, 30th, ...) goes to val


class DataError(ValueError):
    """A corpus, path or prepared file the user must fix; the message says how."""


# ----------------------------------------------------------------------------------------------
# reading corpora (streaming)


def _sources(dataset: str, flag: str = '--dataset') -> list[Path]:
    """The files of a corpus; `flag` names the option it came from in the errors."""
    if dataset == 'sotu':
        files = [BUNDLED / 'sotu.jsonl.xz', BUNDLED / 'moby_dick.txt.xz']
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise DataError(f"bundled corpus missing: {', '.join(missing)}. Install from a clone of the "
                            f"repository (pip install -e .) so that data/ sits beside calm_min/")
        return files
    p = Path(dataset)
    if not p.exists():
        raise DataError(f"{flag}={dataset!r}: no such file or folder. Use 'sotu' (bundled), a .txt "
                        f"file, a folder of .txt files, or a .jsonl file with a 'text' field")
    if p.is_dir():
        files = sorted(p.rglob('*.txt'))
        if not files:
            raise DataError(f"{flag}={dataset!r}: the folder holds no .txt files")
        return files
    if p.suffix not in ('.txt', '.jsonl', '.xz'):
        raise DataError(f"{flag}={dataset!r}: expected a .txt or .jsonl file, or a folder")
    return [p]


def _open_binary(path: Path):
    return lzma.open(path, 'rb') if path.suffix == '.xz' else open(path, 'rb')


def _check_text(path: Path):
    """Refuse a binary file, a corrupt .xz or bytes that are not UTF-8, naming the file and the offset."""
    try:
        with _open_binary(path) as f:
            dec = codecs.getincrementaldecoder('utf-8')()
            offset, first = 0, True
            for block in iter(lambda: f.read(1 << 20), b''):
                if first and b'\0' in block[:65536]:
                    raise DataError(f"{path} looks like a binary file (it holds NUL bytes): give text, "
                                    f"a folder of .txt files or a .jsonl")
                first = False
                try:
                    dec.decode(block)
                except UnicodeDecodeError as e:
                    raise DataError(f"{path} is not UTF-8 text: invalid byte {block[e.start]:#04x} at byte offset "
                                    f"{offset + e.start}; convert it to UTF-8 (e.g. iconv -t utf-8)") from None
                offset += len(block)
            dec.decode(b'', final=True)
    except (lzma.LZMAError, EOFError) as e:
        raise DataError(f"{path} is not a readable .xz file ({e}): re-download or recompress it") from None
    except UnicodeDecodeError:
        raise DataError(f"{path} is not UTF-8 text: it ends inside a multi-byte character") from None


def _open_text(path: Path):
    _check_text(path)
    if path.suffix == '.xz':
        return lzma.open(path, 'rt', encoding='utf-8')
    return open(path, encoding='utf-8')


def _jsonl_texts(path: Path) -> Iterator[str]:
    with _open_text(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                text = json.loads(line)['text']
            except (json.JSONDecodeError, KeyError, TypeError):
                raise DataError(f"{path}:{lineno}: each line must be a JSON object with a 'text' field") from None
            if not isinstance(text, str):
                raise DataError(f"{path}:{lineno}: 'text' must be a string, got {type(text).__name__}")
            yield text


def _text_pieces(path: Path, for_splits: bool = False) -> Iterator[str]:
    """One .txt file as documents of ~PIECE_BYTES characters, cut at line ends (streamed). With
    `for_splits`, a file too short for VAL_EVERY // 2 + 1 such pieces (the fewest that give val one) is
    cut into VAL_EVERY pieces of equal length instead, so that a small file still has a val split."""
    with _open_text(path) as f:
        lines = f
        if for_splits:                                    # read up to that much first: is the file small?
            head, size, enough = [], 0, (VAL_EVERY // 2 + 1) * PIECE_BYTES
            for line in f:
                head.append(line)
                size += len(line)
                if size >= enough:
                    break
            if size < enough:
                yield from _equal_pieces(''.join(head), VAL_EVERY)
                return
            lines = itertools.chain(head, f)
        buf, size = [], 0
        for line in lines:
            buf.append(line)
            size += len(line)
            if size >= PIECE_BYTES:
                yield ''.join(buf)
                buf, size = [], 0
        if buf:
            yield ''.join(buf)


def _equal_pieces(text: str, n: int) -> list[str]:
    """`text` in n pieces of about equal length, each cut at the first line end in its stretch (at
    the stretch's start where there is none); fewer pieces only for a text of fewer than n characters."""
    cuts = [0]
    for k in range(1, n):
        at = len(text) * k // n
        nl = text.find('\n', at, len(text) * (k + 1) // n - 1)    # so that the next stretch keeps a cut
        at = nl + 1 if nl >= 0 else at
        if cuts[-1] < at < len(text):
            cuts.append(at)
    cuts.append(len(text))
    return [text[a:b] for a, b in zip(cuts, cuts[1:]) if b > a]


def _all_documents(dataset: str, flag: str = '--dataset', for_splits: bool = False) -> Iterator[str]:
    sources = _sources(dataset, flag)
    for path in sources:
        name = path.name.removesuffix('.xz')
        if name.endswith('.jsonl'):
            yield from _jsonl_texts(path)
        elif len(sources) == 1:
            yield from _text_pieces(path, for_splits)
        else:
            with _open_text(path) as f:
                yield f.read()


def iter_documents(dataset: str, split: str) -> Iterator[str]:
    """The documents of one split, in a fixed order."""
    if dataset == 'sotu':
        if split == 'test':
            with _open_text(BUNDLED / 'moby_dick.txt.xz') as f:
                yield f.read()
            return
        for i, text in enumerate(_jsonl_texts(BUNDLED / 'sotu.jsonl.xz')):
            if (i % VAL_EVERY == VAL_EVERY // 2) == (split == 'val'):
                yield text
        return
    if split == 'test':
        return
    for i, text in enumerate(_all_documents(dataset, for_splits=True)):
        if (i % VAL_EVERY == VAL_EVERY // 2) == (split == 'val'):
            yield text


# ----------------------------------------------------------------------------------------------
# preparation


def _fingerprint(dataset: str, tokenizer: str, vocab_size: int) -> dict:
    srcs = []
    for p in _sources(dataset):
        st = p.stat()
        srcs.append([str(p.resolve()), st.st_size, st.st_mtime_ns])
    if dataset == 'sotu':  # bundled files: content, not place, is what matters
        srcs = [[p.name, hashlib.sha256(p.read_bytes()).hexdigest()] for p in _sources(dataset)]
    tok = tokenizer
    if tokenizer not in ('bpe', 'bytes'):
        tok = ['file', hashlib.sha256(Path(tokenizer).read_bytes()).hexdigest()]
    return {'format': FORMAT, 'sources': srcs, 'tokenizer': tok, 'vocab_size': vocab_size if tokenizer == 'bpe' else None}


def prepared_dir(dataset: str, tokenizer: str, vocab_size: int, data_dir: str) -> Path:
    if dataset == 'sotu':
        name = 'sotu'
    else:
        p = Path(dataset).resolve()
        name = p.stem.removesuffix('.jsonl') + '-' + hashlib.sha256(str(p).encode()).hexdigest()[:8]
    if tokenizer == 'bpe':
        tag = f'bpe{vocab_size}'
    elif tokenizer == 'bytes':
        tag = 'bytes'
    else:
        tag = 'tok-' + hashlib.sha256(str(Path(tokenizer).resolve()).encode()).hexdigest()[:8]
    return Path(data_dir) / f'{name}-{tag}'


def prepare(dataset: str = 'sotu', tokenizer: str = 'bpe', vocab_size: int = 4096,
            data_dir: str = 'data_cache', verbose: bool = True) -> Path:
    """Tokenize the corpus once; return the folder holding meta.json and the .bin/.idx files."""
    if tokenizer not in ('bpe', 'bytes') and not Path(tokenizer).is_file():
        raise DataError(f"--tokenizer={tokenizer!r}: use 'bpe', 'bytes' or the path of a tokenizer.json")
    if Path(data_dir).exists() and not Path(data_dir).is_dir():
        raise DataError(f"--data_dir={data_dir} is a file, not a folder: choose a folder for the prepared data")
    out = prepared_dir(dataset, tokenizer, vocab_size, data_dir)
    fp = _fingerprint(dataset, tokenizer, vocab_size)
    log = print if verbose else (lambda *a, **k: None)
    if _is_prepared(out, fp, log):
        return out
    tok = None
    if tokenizer != 'bpe':                                   # a given tokenizer is checked before anything is written
        try:
            tok = Tokenizer.from_config(tokenizer)
        except (ValueError, OSError) as e:
            raise DataError(f"--tokenizer={tokenizer}: {e}") from None
    out.mkdir(parents=True, exist_ok=True)
    with _one_at_a_time(out, log):
        if not _is_prepared(out, fp, lambda *a, **k: None):   # another process may have prepared it meanwhile
            _write_prepared(out, fp, dataset, tokenizer, vocab_size, tok, log)
    return out


def _is_prepared(out: Path, fp: dict, log) -> bool:
    """meta.json is there, for these sources and settings, and every file it records is intact."""
    try:
        meta = json.loads((out / 'meta.json').read_text())
    except (OSError, json.JSONDecodeError):
        return False
    if meta.get('fingerprint') != fp:
        return False
    bad = _damaged(out, meta)
    if bad:
        log(f"{bad}: preparing the data again")
    return not bad


@contextlib.contextmanager
def _one_at_a_time(out: Path, log):
    """An exclusive lock on {out}.lock (released when the process ends, however it ends), so that two
    runs started together on a fresh cache prepare `out` once. Where the OS or the folder allows no
    lock (no fcntl, a read-only cache), nothing is locked."""
    try:
        import fcntl
        f = open(out.with_name(out.name + '.lock'), 'a')
    except (ImportError, OSError):
        yield
        return
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"waiting for another process that is preparing {out} ...")
            fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _write_prepared(out: Path, fp: dict, dataset: str, tokenizer: str, vocab_size: int, tok, log):
    """Tokenize every split into `out` (tokenizer.json, {split}.bin/.idx, then meta.json last)."""
    log(f"preparing {dataset} with tokenizer {tokenizer} into {out} ...")
    if tokenizer == 'bpe':
        tok = train_bpe(iter_documents(dataset, 'train'), vocab_size)
    if tokenizer == 'bpe' and tok.vocab_size < vocab_size:
        log(f"note: --vocab_size={vocab_size}, but the BPE trainer found only {tok.vocab_size} tokens worth "
            f"merging in this corpus: the vocabulary has {tok.vocab_size}")
    tok.save(out / 'tokenizer.json')
    dtype = np.uint16 if tok.vocab_size <= 65535 else np.uint32
    splits = {}
    for split in ('train', 'val', 'test'):
        n_tokens, n_bytes, starts = 0, 0, []
        tmp = out / f'{split}.bin.tmp'
        with open(tmp, 'wb') as f:
            batch: list[str] = []

            def flush():
                nonlocal n_tokens
                for ids in tok.encode_batch(batch):
                    starts.append(n_tokens)
                    arr = np.asarray(ids + [tok.eot_id], dtype=dtype)
                    arr.tofile(f)
                    n_tokens += len(arr)
                batch.clear()
            for text in iter_documents(dataset, split):
                batch.append(text)
                n_bytes += len(text.encode('utf-8'))
                if len(batch) >= 64:
                    flush()
            flush()
        if n_tokens == 0:
            tmp.unlink()
            if split == 'test':
                continue
            raise DataError(f"--dataset={dataset!r} gives an empty {split} split: a corpus needs at least "
                            f"11 documents (every 20th goes to val; a .txt file is cut into ~64 KB pieces, or 20 if smaller)")
        os.replace(tmp, out / f'{split}.bin')
        np.asarray(starts, dtype=np.int64).tofile(out / f'{split}.idx')
        splits[split] = {'tokens': n_tokens, 'documents': len(starts), 'bytes': n_bytes,
                         'sha256': {ext: _sha256(out / f'{split}.{ext}') for ext in ('bin', 'idx')}}
        log(f"  {split}: {len(starts)} documents, {n_bytes:,} bytes, {n_tokens:,} tokens")
    meta = {'fingerprint': fp, 'dataset': dataset, 'tokenizer': tok.identity, 'dtype': np.dtype(dtype).name,
            'splits': splits}
    tmp = out / 'meta.json.tmp'
    tmp.write_text(json.dumps(meta, indent=1))
    os.replace(tmp, out / 'meta.json')


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            h.update(block)
    return h.hexdigest()


def _damaged(folder: Path, meta: dict, hashes: bool = True) -> str:
    """'' if every prepared file has the size (and, with hashes, the sha256) meta.json recorded, else why not."""
    itemsize = np.dtype(meta.get('dtype', 'uint16')).itemsize
    for split, info in meta.get('splits', {}).items():
        sizes = {'bin': info['tokens'] * itemsize, 'idx': info['documents'] * 8}
        for ext, size in sizes.items():
            p = folder / f'{split}.{ext}'
            if not p.is_file() or p.stat().st_size != size:
                return f"{p} is missing or truncated ({p.stat().st_size if p.is_file() else 0} bytes, {size} expected)"
            if hashes and 'sha256' in info and _sha256(p) != info['sha256'][ext]:
                return f"{p} does not match the checksum recorded in meta.json"
    return ''


# ----------------------------------------------------------------------------------------------
# loading and sampling


class Corpus:
    """A prepared corpus: `tokenizer`, `meta`, and per split the token memmap and document starts."""

    def __init__(self, folder: Path):
        folder = Path(folder)
        meta_path = folder / 'meta.json'
        if not meta_path.is_file():
            raise DataError(f"{folder} holds no prepared data (meta.json missing); run python -m calm_min.data")
        self.folder = folder
        self.meta = json.loads(meta_path.read_text())
        self.tokenizer = Tokenizer.load(folder / 'tokenizer.json', kind=self.meta['tokenizer']['kind'])
        if self.tokenizer.identity != self.meta['tokenizer']:
            raise DataError(f"{folder}/tokenizer.json does not match meta.json: delete {folder} and prepare again")
        bad = _damaged(folder, self.meta, hashes=False)
        if bad:
            raise DataError(f"{bad}: delete {folder} and prepare again")

    def tokens(self, split: str) -> np.ndarray:
        if split not in self.meta['splits']:
            raise DataError(f"split {split!r} is not prepared; available: {', '.join(self.meta['splits'])}")
        path = self.folder / f'{split}.bin'
        if not path.is_file():
            raise DataError(f"{path} is missing: delete {self.folder} and prepare again")
        return np.memmap(path, dtype=self.meta['dtype'], mode='r')

    def doc_starts(self, split: str) -> np.ndarray:
        return np.fromfile(self.folder / f'{split}.idx', dtype=np.int64)

    def bytes_per_token(self, split: str) -> float:
        s = self.meta['splits'][split]
        return s['bytes'] / s['tokens']


def load_corpus(dataset: str, tokenizer: str, vocab_size: int, data_dir: str, verbose: bool = True) -> Corpus:
    return Corpus(prepare(dataset, tokenizer, vocab_size, data_dir, verbose=verbose))


def tokenize_text(path: str, tokenizer: Tokenizer) -> tuple[np.ndarray, np.ndarray, int]:
    """Any held-out text (a .txt file, a folder of .txt files, a .jsonl with a 'text' field) with a
    given tokenizer, all of it, packed as a prepared split is: (tokens, document starts, UTF-8 bytes)."""
    ids, starts, n_tokens, n_bytes = [], [], 0, 0
    for text in _all_documents(path, '--data'):
        ids.append(tokenizer.encode(text) + [tokenizer.eot_id])
        starts.append(n_tokens)
        n_tokens += len(ids[-1])
        n_bytes += len(text.encode('utf-8'))
    if not ids:
        raise DataError(f"--data={path}: no documents found")
    return np.concatenate([np.asarray(d, dtype=np.int64) for d in ids]), np.asarray(starts, dtype=np.int64), n_bytes


def lm_batch(tokens: np.ndarray, batch_size: int, length: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random contiguous blocks of `length` tokens (plain packing across documents): (B, length)."""
    if len(tokens) < length:
        raise DataError(f"the split has {len(tokens)} tokens, fewer than one block of {length}: "
                        f"lower --block_size or use a larger corpus")
    offsets = torch.randint(len(tokens) - length + 1, (batch_size,), generator=generator).tolist()
    return torch.from_numpy(np.stack([tokens[o:o + length].astype(np.int64) for o in offsets]))


def shifted_batch(tokens: np.ndarray, batch_size: int, window: int, shift: int,
                  generator: torch.Generator | None = None, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """A language model's (x, targets): `lm_batch` windows of `window` tokens, x without their last
    `shift` tokens and targets without their first, so targets are x moved on by one prediction step
    (1 token for the baseline, one chunk of K for CALM): (B, window - shift) each, two views of the
    windows, which go to `device` once."""
    w = lm_batch(tokens, batch_size, window, generator).to(device)           # (B, window)
    return w[:, :-shift], w[:, shift:]


class ChunkIndex:
    """Chunks of K tokens with every document starting on a chunk boundary (docs/method.md section 2): the tail
    of each document (which ends in end-of-text) is padded with end-of-text to a multiple of K."""

    def __init__(self, tokens: np.ndarray, doc_starts: np.ndarray, chunk_size: int, pad_id: int):
        self.tokens, self.K, self.pad_id = tokens, chunk_size, pad_id
        self.starts = torch.from_numpy(doc_starts.astype(np.int64))
        self.ends = torch.cat([self.starts[1:], torch.tensor([len(tokens)])])
        n_chunks = (self.ends - self.starts + chunk_size - 1) // chunk_size
        self.cum = torch.cumsum(n_chunks, 0)                        # chunks before the end of doc i
        self.total = int(self.cum[-1])

    def chunks(self, ids: torch.Tensor) -> torch.Tensor:
        """The chunks with global indices `ids` (n,) -> (n, K)."""
        doc = torch.searchsorted(self.cum, ids, right=True)         # (n,)
        first = self.cum[doc] - (self.ends[doc] - self.starts[doc] + self.K - 1) // self.K
        pos = self.starts[doc] + (ids - first) * self.K              # (n,)
        idx = pos[:, None] + torch.arange(self.K)                    # (n, K)
        valid = idx < self.ends[doc][:, None]
        toks = torch.from_numpy(self.tokens[idx.clamp_max(len(self.tokens) - 1).numpy()].astype(np.int64))
        return torch.where(valid, toks, torch.full_like(toks, self.pad_id))

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.chunks(torch.randint(self.total, (batch_size,), generator=generator))


def eval_blocks(tokens: np.ndarray, length: int, max_blocks: int = 0) -> torch.Tensor:
    """Consecutive non-overlapping blocks of `length` tokens from the start of a split: (n, length).
    With max_blocks > 0, that many blocks spread evenly over the split."""
    n = len(tokens) // length
    if n == 0:
        raise DataError(f"the split has {len(tokens)} tokens, fewer than one block of {length}")
    picks = np.arange(n) if not max_blocks or max_blocks >= n else np.linspace(0, n - 1, max_blocks).round().astype(int)
    return torch.from_numpy(np.stack([tokens[i * length:(i + 1) * length].astype(np.int64) for i in picks]))


if __name__ == '__main__':
    from .config import ConfigError, TrainConfig, parse_args
    try:
        cfg = parse_args(sys.argv[1:], TrainConfig)
        prepare(cfg.dataset, cfg.tokenizer, cfg.vocab_size, cfg.data_dir)
    except (ConfigError, DataError) as e:
        sys.exit(f"error: {e}")
