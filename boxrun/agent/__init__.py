"""The box side: `boxrun agent`, the job's process supervisor, log pump and workspace."""
