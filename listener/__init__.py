"""The listener service."""
