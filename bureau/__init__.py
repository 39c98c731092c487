"""Bureau: the machine side of a Matrix-coordinated fleet, and its operator tooling."""

__version__ = "0.1.0"
