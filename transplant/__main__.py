"""``python -m transplant …`` runs the command line; ``accelerate launch -m transplant train …``
is how several processes run ``transplant train``."""

from transplant.cli import app

app()
