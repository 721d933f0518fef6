"""Training-job queue: domain types, the JobStore interface and its in-memory and PostgreSQL stores."""
