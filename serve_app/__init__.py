"""recognition-serve: image recognition on Ray Serve, watched and sized by itself."""

__version__ = "0.1.0"
