"""binsweep's platform: command line, search spaces, sweep driver, MLflow tracking, leaderboard and registry.

It knows trainables only through `trainables.registry`.
"""

__version__ = "0.1.0"
