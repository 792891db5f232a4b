"""calm-min: a small reference implementation of CALM (Continuous Autoregressive Language Models,
arXiv:2510.27688). One file per part of the paper: autoencoder, backbone, energy_head, calm,
brierlm, sampling; gpt is the discrete baseline; config, tokenizer, data and checkpoint support them."""
