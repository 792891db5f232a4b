from setuptools import find_packages, setup

setup(
    name='calm-min',
    version='0.1.0',
    description='A small, readable reference implementation of CALM (Continuous Autoregressive Language Models)',
    packages=find_packages(include=['calm_min', 'calm_min.*']),
    python_requires='>=3.10',
    install_requires=['torch>=2.3', 'numpy', 'einops', 'tokenizers'],
    extras_require={'test': ['pytest', 'hypothesis'], 'plot': ['matplotlib']},
)
