"""Packaging and process supervision: `colorizer archive`, `serve`, `stop`, and the
TorchServe configuration files they use (config.properties, metrics.yaml,
model-config.yaml, prometheus.yml)."""
