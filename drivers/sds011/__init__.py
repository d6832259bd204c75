"""Nova Fitness SDS011 particulate sensor (10-byte frames)."""
