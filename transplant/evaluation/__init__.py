"""Measuring a transplant: byte-level perplexity against the base (:mod:`.evaluate`), several
methods side by side (:mod:`.compare`), and the tables and plots they write (:mod:`.report`)."""
