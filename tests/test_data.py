import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from calm_min.data import (ChunkIndex, Corpus, DataError, _equal_pieces, eval_blocks, lm_batch, load_corpus, prepare,
                           prepared_dir, shifted_batch, tokenize_text)
from calm_min.tokenizer import Tokenizer, train_bpe
from conftest import ROOT, make_docs


@given(st.text(max_size=200))
@settings(max_examples=50, deadline=None)
def test_bytes_round_trip(text):
    tok = Tokenizer('bytes')
    ids = tok.encode(text)
    assert max(ids, default=0) < 256 and tok.decode(ids) == text


@pytest.fixture(scope='module')
def small_bpe():
    return train_bpe(make_docs(20), vocab_size=300)


@given(st.text(alphabet=st.characters(codec='utf-8'), max_size=100))
@settings(max_examples=50, deadline=None)
def test_bpe_round_trip(small_bpe, text):
    assert small_bpe.decode(small_bpe.encode(text)) == text


def test_tokenizers_of_one_size_trained_on_other_text_differ_in_identity(small_bpe):
    """A checkpoint's tokenizer check compares identities: two BPEs of the same size and end-of-text
    id but other merges must not pass for one another (the identity holds a hash of the whole file)."""
    other = train_bpe(make_docs(20, seed=1), vocab_size=300)
    assert (other.vocab_size, other.eot_id) == (small_bpe.vocab_size, small_bpe.eot_id)
    assert other.to_str() != small_bpe.to_str() and other.identity != small_bpe.identity


def test_bytes_decoding_drops_end_of_text():
    """The byte tokenizer's end-of-text id (256) is no byte: decoding leaves it out, it does not wrap."""
    tok = Tokenizer('bytes')
    assert tok.decode([104, 105, tok.eot_id, 33]) == 'hi!' and tok.decode([tok.eot_id]) == ''


def test_bpe_is_deterministic_and_has_eot(small_bpe):
    again = train_bpe(make_docs(20), vocab_size=300)
    assert again.sha256 == small_bpe.sha256
    assert small_bpe.eot_id == 0 and small_bpe.vocab_size == 300


def test_user_tokenizer_file(tmp_path, small_bpe):
    small_bpe.save(tmp_path / 'tok.json')
    tok = Tokenizer.from_config(str(tmp_path / 'tok.json'))
    assert tok.encode('the nation') == small_bpe.encode('the nation') and tok.sha256 == small_bpe.sha256
    (tmp_path / 'bad.json').write_text('{not json')
    with pytest.raises(ValueError, match='not a valid tokenizer.json'):
        Tokenizer.from_config(str(tmp_path / 'bad.json'))
    from tokenizers import Tokenizer as HFTokenizer, models
    HFTokenizer(models.WordLevel({'a': 0, '[UNK]': 1}, unk_token='[UNK]')).save(str(tmp_path / 'no_eot.json'))
    with pytest.raises(DataError, match=r'^--tokenizer=.*no_eot.json: the tokenizer has no end-of-text token'):
        prepare('sotu', str(tmp_path / 'no_eot.json'), 0, str(tmp_path / 'cache'))
    assert not (tmp_path / 'cache').exists()                # refused before anything is written


@pytest.mark.parametrize('form', ['txt', 'folder', 'jsonl'])
def test_user_corpus_prepared(tmp_path, form):
    docs = make_docs(30, words=40)
    if form == 'txt':
        src = tmp_path / 'corpus.txt'
        src.write_text('\n'.join(docs) * 100)                # ~750 KB: cut into ~12 pieces of 64 KB
    elif form == 'folder':
        src = tmp_path / 'docs'
        src.mkdir()
        for i, d in enumerate(docs):
            (src / f'{i:03d}.txt').write_text(d)
    else:
        src = tmp_path / 'c.jsonl'
        src.write_text(''.join(json.dumps({'text': d}) + '\n' for d in docs))
    out = prepare(str(src), 'bpe', 300, str(tmp_path / 'cache'), verbose=False)
    meta = json.loads((out / 'meta.json').read_text())
    assert meta['tokenizer']['vocab_size'] == 300 and meta['dtype'] == 'uint16'
    c = Corpus(out)
    for split in ('train', 'val'):
        toks = c.tokens(split)
        assert len(toks) == meta['splits'][split]['tokens'] > 0
        starts = c.doc_starts(split)
        assert len(starts) == meta['splits'][split]['documents']
        assert (toks[starts[1:] - 1] == c.tokenizer.eot_id).all() and toks[-1] == c.tokenizer.eot_id
    if form == 'txt':  # over 704 KB: streamed in pieces of 64 KB (cut at the first line end past them)
        assert meta['splits']['train']['documents'] + meta['splits']['val']['documents'] == len(src.read_text()) // 2**16 + 1
    if form != 'txt':  # whole documents: the val split decodes back to documents 10 of each 20
        val_docs = c.tokenizer.decode(c.tokens('val')).split('<|endoftext|>')[:-1]
        assert val_docs == [d for i, d in enumerate(docs) if i % 20 == 10]


@pytest.mark.parametrize('lines', [True, False])
def test_small_txt_file_is_cut_into_20_pieces(tmp_path, lines):
    """A .txt file too short for 11 pieces of 64 KB (no val split) is cut into 20 pieces of about equal
    length, at line ends where it has them: piece 10 is val, the text is all there, in order."""
    text = ('\n' if lines else ' ').join(make_docs(60, words=40)) + '\n'
    src = tmp_path / 'small.txt'
    src.write_text(text)
    c = Corpus(prepare(str(src), 'bytes', 0, str(tmp_path / 'cache'), verbose=False))
    def documents(split):
        toks, starts = c.tokens(split), list(c.doc_starts(split)) + [len(c.tokens(split))]
        return [c.tokenizer.decode(toks[a:b - 1]) for a, b in zip(starts, starts[1:])]   # each without its end-of-text
    pieces = {s: documents(s) for s in ('train', 'val')}
    assert len(pieces['train']) == 19 and len(pieces['val']) == 1
    assert ''.join(pieces['train'][:10] + pieces['val'] + pieces['train'][10:]) == text
    longest_line = max(len(line) + 1 for line in text.splitlines())
    for p in pieces['train'] + pieces['val']:
        assert abs(len(p) - len(text) / 20) <= (longest_line if lines else 1)
        assert p.endswith('\n') or not lines


@given(st.text(alphabet='ab \n', max_size=300), st.integers(1, 25))
@settings(max_examples=200, deadline=None)
def test_equal_pieces_keep_the_text(text, n):
    pieces = _equal_pieces(text, n)
    assert ''.join(pieces) == text and all(pieces) and len(pieces) <= n
    if len(text) >= n:                      # a cut in every stretch
        assert len(pieces) == n


def test_prepare_is_idempotent(tmp_path, corpus_jsonl):
    out = prepare(str(corpus_jsonl), 'bytes', 0, str(tmp_path), verbose=False)
    mtime = (out / 'train.bin').stat().st_mtime_ns
    assert prepare(str(corpus_jsonl), 'bytes', 0, str(tmp_path), verbose=False) == out
    assert (out / 'train.bin').stat().st_mtime_ns == mtime


def test_missing_and_bad_corpus(tmp_path):
    with pytest.raises(DataError, match='no such file or folder'):
        prepare(str(tmp_path / 'nope.txt'), 'bytes', 0, str(tmp_path))
    (tmp_path / 'a_file').write_text('')
    with pytest.raises(DataError, match='--data_dir=.* is a file, not a folder'):
        prepare('sotu', 'bytes', 0, str(tmp_path / 'a_file'))
    bad = tmp_path / 'bad.jsonl'
    bad.write_text('{"txt": "x"}\n')
    with pytest.raises(DataError, match="'text' field"):
        prepare(str(bad), 'bytes', 0, str(tmp_path))
    with pytest.raises(DataError, match="--tokenizer"):
        prepare(str(bad), 'wordpiece', 0, str(tmp_path))


def test_lm_batch_blocks_are_contiguous():
    toks = np.arange(1000, dtype=np.uint16)
    b = lm_batch(toks, 8, 17, torch.Generator().manual_seed(0))
    assert b.shape == (8, 17) and (b.diff(dim=1) == 1).all()
    with pytest.raises(DataError, match='fewer than one block'):
        lm_batch(toks, 1, 2000)
    # every start is drawn, the last one (a split of exactly one block) included
    starts = lm_batch(toks[:19], 400, 17, torch.Generator().manual_seed(0))[:, 0]
    assert sorted(set(starts.tolist())) == [0, 1, 2]
    assert torch.equal(lm_batch(toks[:17], 2, 17), torch.arange(17).expand(2, 17))


@pytest.mark.parametrize('shift', [1, 4])
def test_targets_are_the_input_moved_on_by_one_prediction_step(shift):
    """The baseline predicts the next token (shift 1), CALM the next chunk of K (shift K)."""
    toks = np.arange(1000, dtype=np.uint16)
    x, targets = shifted_batch(toks, 8, 64, shift, torch.Generator().manual_seed(0))
    assert x.shape == targets.shape == (8, 64 - shift)
    assert (x.diff(dim=1) == 1).all() and torch.equal(targets, x + shift)


def test_chunks_start_on_document_boundaries():
    # documents of lengths 5, 3, 8 (each ends in EOT = 9)
    toks = np.array([1, 2, 3, 4, 9, 5, 6, 9, 1, 1, 1, 1, 2, 2, 2, 9], dtype=np.uint16)
    idx = ChunkIndex(toks, np.array([0, 5, 8]), chunk_size=4, pad_id=9)
    assert idx.total == 2 + 1 + 2
    all_chunks = idx.chunks(torch.arange(idx.total)).tolist()
    assert all_chunks == [[1, 2, 3, 4], [9, 9, 9, 9], [5, 6, 9, 9], [1, 1, 1, 1], [2, 2, 2, 9]]
    s = idx.sample(100, torch.Generator().manual_seed(0))
    assert s.shape == (100, 4) and {tuple(r) for r in s.tolist()} <= {tuple(r) for r in all_chunks}


def test_eval_blocks():
    toks = np.arange(100)
    assert eval_blocks(toks, 10).shape == (10, 10)
    b = eval_blocks(toks, 10, max_blocks=3)
    assert b.shape == (3, 10) and b[0, 0] == 0 and b[-1, 0] == 90 and (b.diff(dim=1) == 1).all()


@pytest.mark.skipif(sys.platform == 'win32', reason='no fcntl locks')
def test_a_second_preparation_waits_for_the_first(tmp_path, corpus_jsonl):
    """Two runs started together on a fresh cache: the second waits on the first's lock instead of
    writing the same .tmp files (a race that crashed one run), then finds the data prepared."""
    import fcntl
    out = prepared_dir(str(corpus_jsonl), 'bytes', 0, str(tmp_path / 'cache'))
    out.parent.mkdir(parents=True)
    code = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); from calm_min.data import prepare; "
            f"prepare({str(corpus_jsonl)!r}, 'bytes', 0, {str(tmp_path / 'cache')!r})")
    with open(out.with_name(out.name + '.lock'), 'a') as held:        # the first run, mid-preparation
        fcntl.flock(held, fcntl.LOCK_EX)
        p = subprocess.Popen([sys.executable, '-c', code], stdout=subprocess.PIPE, text=True)
        first = p.stdout.readline()
        assert first.startswith('waiting for another process that is preparing') and p.poll() is None
        assert not (out / 'meta.json').exists()
        done = prepare(str(corpus_jsonl), 'bytes', 0, str(tmp_path / 'other'), verbose=False)
        shutil.copytree(done, out, dirs_exist_ok=True)  # the first run's work, finished
    rest = p.communicate(timeout=120)[0]
    assert p.returncode == 0 and 'preparing' not in rest                  # found it done, did not redo it
    Corpus(out)


def test_an_edited_corpus_of_the_same_size_is_prepared_again(tmp_path):
    """The prepared data is keyed by the corpus file's place, size and modification time: an edit that
    keeps the size still prepares the data again."""
    src = tmp_path / 'docs.jsonl'
    src.write_text(''.join(json.dumps({'text': t}) + '\n' for t in make_docs(n_docs=12, words=50)))
    first = load_corpus(str(src), 'bytes', 0, str(tmp_path / 'cache'), verbose=False).tokens('train').copy()
    st = src.stat()
    src.write_text(src.read_text().replace('the', 'THE'))                 # the same number of bytes
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert src.stat().st_size == st.st_size
    again = load_corpus(str(src), 'bytes', 0, str(tmp_path / 'cache'), verbose=False).tokens('train')
    assert len(again) == len(first) and not np.array_equal(again, first)
    assert b'THE' in bytes(again[again < 256].astype(np.uint8))


def test_bytes_are_counted_in_utf8_and_each_document_ends_with_end_of_text(tmp_path):
    """Bits per byte divide by UTF-8 bytes: with the bytes tokenizer a document of n bytes is n tokens
    and one end-of-text, for a prepared split and for eval.py's --data text alike; 'é' is 2 bytes."""
    src = tmp_path / 'docs.jsonl'
    src.write_text(''.join(json.dumps({'text': 'é' * 40 + f' {i}'}) + '\n' for i in range(12)))
    c = load_corpus(str(src), 'bytes', 0, str(tmp_path / 'cache'), verbose=False)
    for split in ('train', 'val'):
        toks, starts = c.tokens(split), c.doc_starts(split)
        assert c.bytes_per_token(split) == pytest.approx((len(toks) - len(starts)) / len(toks))
        assert c.bytes_per_token(split) > 80 / 84                            # bytes, not characters (41 or 42 each)
    tokens, starts, n_bytes = tokenize_text(str(src), Tokenizer('bytes'))
    assert len(starts) == 12 and n_bytes == len(tokens) - 12 == sum(80 + len(f' {i}') for i in range(12))
    ends = np.append(starts[1:], len(tokens)) - 1
    assert (tokens[ends] == 256).all() and (tokens[np.setdiff1d(np.arange(len(tokens)), ends)] < 256).all()


def test_a_replaced_tokenizer_file_is_refused(tmp_path, corpus_jsonl, small_bpe):
    """A prepared folder whose tokenizer.json is not the one meta.json records (the token ids would
    mean other text) is refused with what to do."""
    small_bpe.save(tmp_path / 'tok.json')
    out = prepare(str(corpus_jsonl), str(tmp_path / 'tok.json'), 0, str(tmp_path / 'cache'), verbose=False)
    Corpus(out)
    train_bpe(make_docs(20, seed=1), vocab_size=280).save(out / 'tokenizer.json')
    with pytest.raises(DataError, match='does not match meta.json: delete'):
        Corpus(out)
