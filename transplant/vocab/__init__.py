"""What tokens are and how two vocabularies meet: surface bytes of every token, exact
matching and decomposition into base pieces, chat markers."""
