"""aoiflow: automated optical inspection that learns normal parts from normal images only."""

__version__ = "0.1.0"
