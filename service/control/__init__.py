"""Supply-temperature control: weather-compensated target, PID with feedforward, one arbiter, safe states."""
