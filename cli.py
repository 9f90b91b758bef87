"""``python cli.py …`` from a checkout runs the same command line as the installed
``transplant``; the app itself lives in :mod:`transplant.cli` so that the wheel installs one
import name."""

from transplant.cli import app

if __name__ == "__main__":
    app()
