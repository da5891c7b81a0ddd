"""boxrun: run scripts on a fleet of remote boxes, each job a durable Temporal workflow."""

__version__ = "0.1.0"
