"""Sparkplug B 3.0 edge node: the payload codec, the MQTT link and the session (docs/SPARKPLUG.md)."""
