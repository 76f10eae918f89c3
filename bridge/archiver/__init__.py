"""The forward bridge: mirror queues and streams into the archive, acknowledging only what is durable."""
