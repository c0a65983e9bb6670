"""The Flask-ML server that the RescueBox desktop app talks to (python -m server.server)."""
