"""Training: the one loop every trainer shares (:mod:`.loop`) and continued pretraining of
a transplanted model (:mod:`.continued`); hypernetwork trainers live in :mod:`transplant.hypernet`."""
