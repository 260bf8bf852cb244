"""basemodels."""
