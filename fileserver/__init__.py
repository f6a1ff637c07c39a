"""The fileserver service."""
