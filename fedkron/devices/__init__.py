"""Edge devices: profiles drawn per client (compute speed, bandwidth, latency, availability) and the
simulated wall time a round takes on them, from its real bytes and measured compute."""
