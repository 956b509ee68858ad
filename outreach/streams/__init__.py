"""The live Kafka runtime."""
