"""Figures: circuitsvis renders and matplotlib plots."""
