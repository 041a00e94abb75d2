"""Alarms: limit, quality and device-offline alarms with ISA-18.2 states."""
