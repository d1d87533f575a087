"""The version of both distributions, rotor and rotor-client: the one place it is written."""

__version__ = "0.1.0"
