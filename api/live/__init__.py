"""Live log following: one LISTEN connection per process, one shared tail per job, followers."""
