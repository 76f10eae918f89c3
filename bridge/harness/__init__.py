"""Test and demo infrastructure: private RabbitMQ nodes started on loopback, never part of archiving
or replaying."""
