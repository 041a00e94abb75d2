"""The fleet: sites' uplinks, the central consumer, the batch wire format and the acknowledgement protocol."""
