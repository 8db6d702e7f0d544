"""The data contract: manifests, validation, audio loading and batching."""
