"""A small text-to-image latent diffusion model for the synthetic benchmark scenes (``bench.scenes``).

``config``: diffusers configs (AutoencoderKL, UNet2DConditionModel, scaled-linear scheduler) and the text
encoder's; ``text``: closed-vocabulary tokenizer + CLIP-like causal text encoder; ``load``: build / load
(safetensors only); ``train``: the training CLI.
"""
