"""The project at a glance: counts, recent trainings, which base models are used."""
