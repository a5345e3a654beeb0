"""One router per resource: jobs, uploads, results, models, health, metrics, viewer, hooks."""
