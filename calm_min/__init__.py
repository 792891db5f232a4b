"""calm-min: a small reference implementation of CALM (Continuous Autoregressive Language Models,
arXiv:2510.27688). One file per part of the paper: autoencoder, backbone, energy_head, calm,
brierlm, sampling; gpt is the discrete baseline; config, tokenizer, data, checkpoint and device
support them. docs/method.md explains the method file by file."""
from .autoencoder import AEConfig, Autoencoder
from .backbone import Backbone, BackboneConfig
from .brierlm import brierlm, evaluate_brier
from .calm import CALM, CALMConfig
from .energy_head import EnergyHead, energy_loss
from .gpt import GPT, GPTConfig
from .sampling import Sampler

__all__ = ['AEConfig', 'Autoencoder', 'Backbone', 'BackboneConfig', 'brierlm', 'evaluate_brier', 'CALM',
           'CALMConfig', 'EnergyHead', 'energy_loss', 'GPT', 'GPTConfig', 'Sampler']
