"""Experiment drivers and instance generators that reproduce the papers' studies (spec section 10)."""
