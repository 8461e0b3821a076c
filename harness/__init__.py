"""harness: hardware-aware compression and benchmarking of MobileNet-family networks with Apache TVM."""

__version__ = "0.1.0"
