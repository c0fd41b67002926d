"""Depth-infused binaural audio generation (Parida et al. 2021) as a binsweep trainable: config, model, metrics.

Registration with the platform (data, recipe, evaluate) comes with the training code.
"""
