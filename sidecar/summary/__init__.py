"""Summaries: a conversation's older events as markdown bullets, the newest whole.

``state`` folds events into a summary incrementally and renders it (pure, deterministic),
``files`` persists summaries and their snapshots, ``cache`` keeps the daemon's states up to
date with every commit.
"""
