"""facefleet: distributed face processing for large video jobs on Ray GPU clusters."""

__version__ = "0.1.0"
