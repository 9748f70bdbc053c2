"""nlhf: Nash Learning from Human Feedback with explicit exploration (ENPO / DENPO)."""

__version__ = "0.1.0"
