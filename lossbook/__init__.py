"""lossbook: adversarial risk, its attack-based estimates, and surrogate losses that tighten them."""
__version__ = "0.1.0"
