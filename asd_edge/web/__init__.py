"""The web process: the fleet's latest state over HTTP."""
