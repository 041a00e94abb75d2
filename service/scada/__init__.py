"""SCADA-facing OPC UA server exposing the plant."""
