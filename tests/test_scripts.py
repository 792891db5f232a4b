"""sample.py and eval.py end to end on test-preset checkpoints (seconds)."""
import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

import eval as evaluate
import sample
import train
from calm_min.checkpoint import CheckpointError
from calm_min.config import ConfigError, EvalConfig, SampleConfig
from calm_min.data import DataError


@pytest.fixture
def trained(train_cfg):
    train.main(dataclasses.replace(train_cfg, model='gpt'))
    train.main(dataclasses.replace(train_cfg, model='calm'))     # trains the AE first
    return train_cfg


def test_sample_both_kinds(trained, capsys):
    for kind in ('gpt', 'calm'):
        texts = sample.main(SampleConfig(ckpt=str(trained.out_dir + f'/{kind}.pt'), prompt='The nation',
                                         max_new_tokens=10, num_samples=2, device='cpu'))
        assert len(texts) == 2 and all(t.startswith('The nation') for t in texts)
    out = capsys.readouterr().out
    assert 'tokens/s' in out and '--- sample 2 ---' in out
    # CALM with the likelihood-free samplers
    calm = trained.out_dir + '/calm.pt'
    assert len(sample.main(SampleConfig(ckpt=calm, temperature=0.5, num_candidates=8, max_new_tokens=8,
                                        device='cpu'))) == 2
    assert len(sample.main(SampleConfig(ckpt=calm, temperature=0.7, sampler='exact', max_new_tokens=4,
                                        device='cpu'))) == 2
    with pytest.raises(ValueError, match='T = 1/n'):
        sample.main(SampleConfig(ckpt=calm, temperature=0.7, sampler='batch', device='cpu'))


def test_sample_returns_each_continuation_of_the_prompt(trained, monkeypatch):
    """More than one batch of 64 sequences gives exactly --num_samples texts, and each text is decoded
    from the prompt on, without the end-of-text token generation starts from."""
    from calm_min.tokenizer import Tokenizer
    decoded, decode = [], Tokenizer.decode
    monkeypatch.setattr(Tokenizer, 'decode', lambda self, ids: decoded.append(list(ids)) or decode(self, ids))
    texts = sample.main(SampleConfig(ckpt=trained.out_dir + '/gpt.pt', prompt='The', max_new_tokens=2,
                                     num_samples=65, device='cpu', compile='false'))
    assert len(texts) == len(decoded) == 65
    assert all(row[:3] == list(b'The') and len(row) == 5 for row in decoded)


def test_sample_bfloat16(trained, monkeypatch):
    """--dtype=bfloat16 casts the weights (the KV cache stays float32 on CPU) and still samples text;
    at temperature 1 each CALM step draws head noise in the weights' dtype."""
    dtypes = []
    load = sample.load_model
    monkeypatch.setattr(sample, 'load_model', lambda *a, **k: dtypes.append(load(*a, **k)) or dtypes[-1])
    for kind in ('gpt', 'calm'):
        texts = sample.main(SampleConfig(ckpt=trained.out_dir + f'/{kind}.pt', prompt='The nation', dtype='bfloat16',
                                         max_new_tokens=8, num_samples=2, device='cpu', compile='false'))
        assert len(texts) == 2 and all(t.startswith('The nation') for t in texts)
    assert [next(m.parameters()).dtype for m, _ in dtypes] == [torch.bfloat16] * 2     # the models that sampled


def test_sample_prompt_file(trained, tmp_path):
    p = tmp_path / 'prompt.txt'
    p.write_text('Peace and')
    texts = sample.main(SampleConfig(ckpt=trained.out_dir + '/gpt.pt', prompt=f'FILE:{p}', max_new_tokens=4,
                                     num_samples=1, device='cpu'))
    assert texts[0].startswith('Peace and')
    p.write_bytes('caf\xe9'.encode('latin-1'))
    with pytest.raises(ConfigError, match='is not UTF-8 text .*offset 3'):
        sample.main(SampleConfig(ckpt=trained.out_dir + '/gpt.pt', prompt=f'FILE:{p}', device='cpu'))


def test_eval_reports(trained, tmp_path):
    out = tmp_path / 'r.json'
    g = evaluate.main(EvalConfig(ckpt=trained.out_dir + '/gpt.pt', context=32, max_blocks=4, bootstrap=50,
                                 device='cpu', out=str(out)))
    assert json.loads(out.read_text()) == json.loads(json.dumps(g))
    again = evaluate.main(EvalConfig(ckpt=trained.out_dir + '/gpt.pt', context=32, max_blocks=2, bootstrap=50,
                                     device='cpu', out=str(out)))                   # a report is replaced
    assert json.loads(out.read_text())['protocol']['blocks'] == again['protocol']['blocks'] == 2
    ckpt = Path(trained.out_dir) / 'gpt.pt'
    before = ckpt.read_bytes()
    for bad, why in ((ckpt, 'not a JSON report'), (tmp_path, 'is a folder')):     # a checkpoint is not
        with pytest.raises(ConfigError, match=why):
            evaluate.main(EvalConfig(ckpt=str(ckpt), context=32, max_blocks=2, device='cpu', out=str(bad)))
    assert ckpt.read_bytes() == before
    r, p = g['results'], g['protocol']
    for key in ('cross_entropy', 'bits_per_byte', 'brierlm', 'brierlm_se', 'brier1', 'brier4_se', 'positions'):
        assert key in r
    assert p['context_tokens'] == 32 and p['blocks'] == 4 and len(p['checkpoint_sha256']) == 64
    assert r['positions'] == 4 * 7                               # starts 4, 8, ..., 28
    c = evaluate.main(EvalConfig(ckpt=trained.out_dir + '/calm.pt', context=32, max_blocks=4, bootstrap=50,
                                 device='cpu'))
    assert c['results']['positions'] == r['positions'] and c['protocol']['context_positions'] == 8
    assert c['results']['energy_loss_positions'] == 4 * 7 and 'cross_entropy' not in c['results']
    a = evaluate.main(EvalConfig(ckpt=trained.out_dir + '/ae.pt', max_blocks=2, context=32, device='cpu'))['results']
    assert a['chunks'] == 16 and 0 <= a['token_accuracy_sampled'] <= 1 and len(a['kl_per_dim']) == 16
    assert set(a['noise_robustness']) == {'0.1', '0.2', '0.3', '0.5', '1.0'}


def test_eval_refuses_a_checkpoint_of_another_tokenizer(trained, tmp_path):
    """Scoring a corpus split with a model trained on another tokenizer's ids would be meaningless."""
    from calm_min.checkpoint import load_checkpoint
    ck = load_checkpoint(trained.out_dir + '/gpt.pt')
    ck['tokenizer'] = dict(ck['tokenizer'], sha256='0' * 64)
    torch.save(ck, tmp_path / 'other.pt')
    with pytest.raises(CheckpointError, match='was trained with tokenizer'):
        evaluate.main(EvalConfig(ckpt=str(tmp_path / 'other.pt'), device='cpu'))


def test_eval_bad_checkpoint(tmp_path):
    bad = tmp_path / 'x.pt'
    bad.write_bytes(b'\0' * 10)
    with pytest.raises(CheckpointError, match='corrupt or truncated'):
        evaluate.main(EvalConfig(ckpt=str(bad), device='cpu'))


def test_eval_any_text(trained, tmp_path, capsys):
    """--data scores held-out text with the checkpoint's own tokenizer: a .txt file, a folder of .txt
    files and a .jsonl give the same figures for the same text; bits per byte use that text's bytes."""
    text = 'The people of the united states in congress. ' * 40
    (tmp_path / 'one.txt').write_text(text)
    (tmp_path / 'folder').mkdir()
    (tmp_path / 'folder' / 'a.txt').write_text(text)
    (tmp_path / 'doc.jsonl').write_text(json.dumps({'text': text}) + '\n')
    runs = {}
    for name in ('one.txt', 'folder', 'doc.jsonl'):
        runs[name] = evaluate.main(EvalConfig(ckpt=trained.out_dir + '/gpt.pt', data=str(tmp_path / name), context=32,
                                              max_blocks=8, bootstrap=20, device='cpu'))
        assert runs[name]['protocol']['data_tokens'] == len(text.encode()) + 1   # bytes + end-of-text
    assert runs['one.txt']['results'] == runs['folder']['results'] == runs['doc.jsonl']['results']
    r = runs['one.txt']['results']
    assert r['bits_per_byte'] == pytest.approx(r['cross_entropy'] / math.log(2) * (len(text) + 1) / len(text))
    c = evaluate.main(EvalConfig(ckpt=trained.out_dir + '/calm.pt', data=str(tmp_path / 'one.txt'), context=32,
                                 max_blocks=8, bootstrap=20, device='cpu'))['results']
    assert c['positions'] == 8 * 7 and 0 <= c['brierlm'] <= 100
    a = evaluate.main(EvalConfig(ckpt=trained.out_dir + '/ae.pt', data=str(tmp_path / 'doc.jsonl'), device='cpu'))
    assert a['results']['chunks'] == -(-(len(text) + 1) // 4)                  # every chunk of the one document
    assert 'longer than' not in capsys.readouterr().err                       # context 32 = the trained 32
    long = evaluate.main(EvalConfig(ckpt=trained.out_dir + '/gpt.pt', data=str(tmp_path / 'one.txt'), context=64,
                                    max_blocks=2, bootstrap=20, device='cpu'))['protocol']
    assert long['trained_block_size'] == 32 and runs['one.txt']['protocol']['trained_block_size'] == 32
    assert 'longer than the 32 tokens the model was trained on' in capsys.readouterr().err  # said, once past it
    with pytest.raises(DataError, match='^--data=.*no such file'):             # names the flag the user gave
        evaluate.main(EvalConfig(ckpt=trained.out_dir + '/gpt.pt', data=str(tmp_path / 'missing.txt'), device='cpu'))


def test_weights_changed_after_saving_are_refused(trained, tmp_path):
    """An autoencoder file whose weights no longer match its recorded hash, and a CALM file whose embedded
    autoencoder no longer matches its recorded `ae_hash`, are refused at load (one changed number each);
    the hash covers the tensors' names too."""
    from calm_min.checkpoint import load_autoencoder, load_checkpoint, load_model, state_hash
    ae_ck = load_checkpoint(trained.ae_ckpt_path)
    ae_ck['model']['emb.weight'][0, 0] += 1
    torch.save(ae_ck, tmp_path / 'ae.pt')
    with pytest.raises(CheckpointError, match='do not match their recorded hash'):
        load_autoencoder(tmp_path / 'ae.pt', ae_ck['tokenizer'], ae_ck['model_config']['chunk_size'])
    calm_ck = load_checkpoint(trained.ckpt_path.with_name('calm.pt'))
    calm_ck['model']['ae.emb.weight'][0, 0] += 1
    torch.save(calm_ck, tmp_path / 'calm.pt')
    with pytest.raises(CheckpointError, match="embedded autoencoder's weights do not match"):
        load_model(tmp_path / 'calm.pt')
    sd = load_checkpoint(trained.ae_ckpt_path)['model']
    renamed = {(k + '_renamed' if k == 'emb.weight' else k): v for k, v in sd.items()}   # same order, same bytes
    assert state_hash(renamed) != state_hash(sd)


def test_a_failed_checkpoint_write_leaves_the_old_file(tmp_path, monkeypatch):
    """save_checkpoint writes a temporary file and renames it over the old one: a write that dies half
    way (here torch.save writes part of the file, then raises) leaves the previous checkpoint whole."""
    from calm_min.checkpoint import save_checkpoint
    path = tmp_path / 'gpt.pt'
    save_checkpoint(path, {'kind': 'gpt', 'step': 1})
    before = path.read_bytes()

    def dies(obj, f, *a, **k):
        Path(f).write_bytes(before[:100])
        raise OSError('No space left on device')
    monkeypatch.setattr(torch, 'save', dies)
    with pytest.raises(OSError, match='No space'):
        save_checkpoint(path, {'kind': 'gpt', 'step': 2})
    assert path.read_bytes() == before


def test_eval_refuses_a_context_with_nothing_to_score(trained):
    """CALM (K = 4) needs a chunk of context and 4 tokens to score: --context=4 is refused, 8 is the least."""
    with pytest.raises(ConfigError, match='leaves nothing to score.*--context >= 8'):
        evaluate.main(EvalConfig(ckpt=trained.out_dir + '/calm.pt', context=4, max_blocks=2, device='cpu'))
    r = evaluate.main(EvalConfig(ckpt=trained.out_dir + '/calm.pt', context=8, max_blocks=2, bootstrap=10, device='cpu'))
    assert r['results']['positions'] == 2


def test_autoencoder_chunks_span_the_split(trained, monkeypatch):
    """--max_blocks limits the autoencoder's chunks to max_blocks x context / K, spread evenly over the
    whole split: its first chunk and its last among them."""
    from calm_min.data import ChunkIndex, load_corpus
    seen = []
    real = evaluate.eval_ae
    monkeypatch.setattr(evaluate, 'eval_ae', lambda ae, chunks, cfg: seen.append(chunks) or real(ae, chunks, cfg))
    evaluate.main(EvalConfig(ckpt=trained.out_dir + '/ae.pt', max_blocks=2, context=32, device='cpu'))
    c = load_corpus(trained.dataset, trained.tokenizer, trained.vocab_size, trained.data_dir, verbose=False)
    idx = ChunkIndex(c.tokens('val'), c.doc_starts('val'), trained.chunk_size, c.tokenizer.eot_id)
    (chunks,) = seen
    assert len(chunks) == 16 < idx.total
    assert torch.equal(chunks[0], idx.chunks(torch.tensor([0]))[0])
    assert torch.equal(chunks[-1], idx.chunks(torch.tensor([idx.total - 1]))[0])
