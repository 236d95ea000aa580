"""Experiment drivers and instance generators that reproduce the papers' studies (the MC-SF paper's studies)."""
