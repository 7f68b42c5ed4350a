"""The node agent: NVML readings attributed to containers, pods and models, served to Prometheus."""

__version__ = "0.1.0"
