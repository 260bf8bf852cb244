"""Long work as jobs: a queue in the database, each job run in its own OS process."""
