"""Long-running worker processes: the control-plane worker and the box agent."""
