"""The kernel every service shares: settings, MQTT bus, topics, payloads, runner, logging."""

__version__ = "0.1.0"
