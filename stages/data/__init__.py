"""Manifests, audio loading, batching and the demo corpus."""
