"""Users, projects, roles and tokens."""
