"""controlplane_api: the HTTP face of the job queue (Starlette)."""
