"""Peer tools that bench/run.py --peers measures docingest against, each run in its own virtual environment."""
