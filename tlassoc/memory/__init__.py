"""Associative memories: read weights as stored pairs, recall probes, ideal constructions."""
