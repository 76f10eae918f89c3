"""The reverse bridge: republish an archive, or a point in time of it, into a broker."""
