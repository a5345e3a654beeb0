"""The HTTP API for viewers: jobs, results, auth and the viewer page (see ``app.create_app``)."""
