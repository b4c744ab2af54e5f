"""imprint: teach a pre-trained text-to-image model a subject from a few photos."""

__version__ = "0.1.0"
