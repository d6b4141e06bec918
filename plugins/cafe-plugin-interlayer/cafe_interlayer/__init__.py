"""Concepts explained by concepts: attribution from an SAE latent to the SAE latents of earlier layers.

The input-patch iERF of a latent says *where* its cause is; with SAEs at several layers, the cause of latent
``n`` at layer ``L`` can also be read in the vocabulary of an earlier layer ``L' < L``: which latents of the
SAE at ``L'``, at which tokens, caused it. The hidden states at ``L'`` are replaced by their SAE
reconstruction plus the reconstruction error (:mod:`cafe_interlayer.splice`), and the target is attributed to
those latents and to the error, which is kept as its own node so that what the SAE misses is reported as such.
"""
