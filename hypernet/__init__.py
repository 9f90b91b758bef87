"""Hypernetworks that predict embedding rows for unseen tokens (ZeTT, HyperOFA).

Each hypernetwork method registers itself in :mod:`transplant.methods.registry` like any
other initialization method; modules placed here are discovered automatically.
"""
